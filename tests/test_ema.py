"""ModelEMA: the exponential moving average of the weights (BasicSR's ema_decay), updated by the trainer,
validated by the evaluator, saved as model.pt and resumed from last.pt."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from monai_rat.engines import AtomicCheckpointSaver, CheckedCheckpointLoader, ModelEMA, model_ema


class Tiny(nn.Module):
    """A region-aware call signature, a parameter and a buffer that changes in training (BatchNorm's statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.out = nn.Conv2d(2, 1, 1)

    def forward(self, x, regions=None):
        return self.out(self.bn(self.conv(x)))


def _steps(net, ema, n, lr=0.5, seed=0):
    """``n`` SGD steps on random data, updating ``ema`` after each; the weights after each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    seen = []
    for _ in range(n):
        x = torch.randn(2, 1, 8, 8, generator=g)
        loss = (net(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        seen.append({k: v.detach().clone() for k, v in net.named_parameters()})
    return seen


def _hand_ema(seen, decay, warmup=False):
    avg = None
    for n, w in enumerate(seen):  # n: updates made before this one
        if avg is None:
            avg = {k: v.clone() for k, v in w.items()}  # the first update copies (AveragedModel)
            continue
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in w}
    return avg


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_hand_computed_average_and_buffers_are_copied(warmup):
    torch.manual_seed(0)
    net = Tiny()
    ema = ModelEMA(net, decay=0.8, warmup=warmup)
    seen = _steps(net, ema, 5)
    expected = _hand_ema(seen, 0.8, warmup)
    got = dict(ema.module.named_parameters())
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    # the average is not the current weights (else the test above could not tell them apart)
    assert any((got[k] - seen[-1][k]).abs().max() > 1e-3 for k in expected)
    # buffers (BatchNorm's running statistics, step count) are the network's current ones, not averaged
    for (k, b), (_, b_net) in zip(ema.module.named_buffers(), net.named_buffers()):
        assert torch.equal(b, b_net), k
    assert int(ema.n_averaged) == 5 and not any(p.requires_grad for p in ema.parameters())
    n = 5
    assert ema.current_decay == pytest.approx(min(0.8, (1 + n) / (10 + n)) if warmup else 0.8)


def test_decay_zero_is_the_raw_weights_and_decay_one_the_first():
    torch.manual_seed(0)
    net = Tiny()
    zero, one = ModelEMA(net, decay=0.0), ModelEMA(net, decay=1.0)

    class Both:
        def update(self):
            zero.update()
            one.update()

    seen = _steps(net, Both(), 3)
    for k, p in zero.module.named_parameters():
        assert torch.equal(p, seen[-1][k]), k
    for k, p in one.module.named_parameters():
        assert torch.equal(p, seen[0][k]), k


def test_model_ema_is_off_for_none_and_checks_its_decay():
    net = Tiny()
    assert model_ema(net, None) is None and model_ema(net, "null") is None and model_ema(net, "None") is None
    assert isinstance(model_ema(net, "0.99", "true"), ModelEMA) and model_ema(net, 0.99, "true").warmup is True
    with pytest.raises(ValueError, match=r"ema_decay.*\[0, 1\].*1.5"):
        ModelEMA(net, decay=1.5)
    with pytest.raises(ValueError, match="number"):
        ModelEMA(net, decay="fast")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ModelEMA(lambda x: x)


def test_a_data_parallel_network_is_averaged_through_its_module(tmp_path):
    torch.manual_seed(0)
    net = Tiny()
    ema = ModelEMA(nn.DataParallel(net), decay=0.5)
    assert ema.source is net and set(ema.state_dict()) == set(net.state_dict())
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        ema = ModelEMA(ddp, decay=0.5)
        assert ema.source is net
        seen = _steps(net, ema, 2)
        expected = _hand_ema(seen, 0.5)
        for k, p in ema.module.named_parameters():
            torch.testing.assert_close(p, expected[k])
    finally:
        dist.destroy_process_group()


def test_model_pt_holds_the_ema_weights_and_loads_into_the_plain_network(tmp_path):
    """The best-model saver with {"model": ema}: a plain model.pt (bare keys, the network's record) of the EMA."""
    from monai_rat.networks import network_from_checkpoint, read_network_record, restoration_network

    kwargs = dict(feature_size=8, network_kwargs={"num_groups": 1, "layers_per_group": 1})
    torch.manual_seed(0)
    net = restoration_network("rat", **kwargs)
    ema = ModelEMA(net, decay=0.5)
    ema.update()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update()  # ema = w + 0.5: differs from both the first and the current weights
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": ema}, filename="model.pt", weights_only_state=True)
    saver.save()
    path = tmp_path / "model.pt"
    state = torch.load(path, weights_only=True)
    assert set(state) == set(net.state_dict())  # no "module." prefix, no n_averaged tensor
    assert read_network_record(str(path))["feature_size"] == 8
    # what evaluation and inference do: build the recorded network, load with the checked loader
    fresh = network_from_checkpoint(str(path))
    loader = CheckedCheckpointLoader(load_path=str(path), load_dict={"model": fresh})
    loader(types.SimpleNamespace(should_terminate=False, state=types.SimpleNamespace(max_epochs=None, epoch=0)))
    for (k, p), (_, q) in zip(fresh.state_dict().items(), ema.module.state_dict().items()):
        assert torch.equal(p, q), k
    assert not torch.equal(dict(fresh.named_parameters())["intro.weight"], dict(net.named_parameters())["intro.weight"])


def test_last_checkpoint_resumes_the_ema_and_its_update_count(tmp_path):
    """last.pt with "ema": the average and n_averaged come back, so the next update averages (does not copy)."""
    torch.manual_seed(0)
    net = Tiny()
    ema = ModelEMA(net, decay=0.9)
    seen = _steps(net, ema, 3)
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net, "ema": ema, "off": None}, filename="last.pt")
    assert "off" not in saver.save_dict  # an optional object that is off (None) is left out
    saver.save()
    torch.manual_seed(1)
    net2 = Tiny()
    ema2 = ModelEMA(net2, decay=0.9)
    resumed = AtomicCheckpointSaver(str(tmp_path), {"network": net2, "ema": ema2}, filename="last.pt", resume=True)
    engine = types.SimpleNamespace(state=types.SimpleNamespace(max_epochs=None, epoch=0, iteration=0))
    resumed.load(engine)
    assert int(ema2.n_averaged) == 3
    for (k, p), (_, q) in zip(ema2.module.state_dict().items(), ema.module.state_dict().items()):
        assert torch.equal(p, q), k
    # one more step on both: the resumed average continues exactly as the uninterrupted one
    more = _steps(net, ema, 1, seed=5)
    _steps(net2, ema2, 1, seed=5)
    expected = _hand_ema(seen + more, 0.9)
    for k, p in ema2.module.named_parameters():
        torch.testing.assert_close(p, expected[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, dict(ema.module.named_parameters())[k], rtol=0, atol=0)


def _data(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        y = torch.rand(1, 8, 8, generator=g)
        items.append({"image": y + 0.3 * torch.randn(1, 8, 8, generator=g), "label": y,
                      "regions": torch.randint(0, 3, (1, 8, 8), generator=g)})
    return items


def test_the_evaluator_validates_the_ema_weights_and_the_best_saver_keeps_them(tmp_path):
    """A MONAI SupervisedTrainer + SupervisedEvaluator(network=ema), wired as the bundles are."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.engines.utils import PrepareBatchExtraInput
    from monai.handlers import MeanAbsoluteError, ValidationHandler, from_engine

    torch.manual_seed(0)
    net = Tiny()
    ema = ModelEMA(net, decay=0.7)
    prepare = PrepareBatchExtraInput({"regions": "regions"})
    val_items = _data(2, seed=1)

    def evaluator(network, handlers=()):
        return SupervisedEvaluator(
            device=torch.device("cpu"), val_data_loader=DataLoader(val_items, batch_size=1), network=network,
            prepare_batch=prepare, key_val_metric={"val_mae": MeanAbsoluteError(output_transform=from_engine(["pred", "label"]))},
            val_handlers=list(handlers),
        )

    best = AtomicCheckpointSaver(str(tmp_path), {"model": ema}, filename="model.pt", key_metric_name="val_mae",
                                 key_metric_negative_sign=True, weights_only_state=True)
    validated = {}  # round -> the EMA weights that round validated

    class Snapshot:
        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.COMPLETED, lambda e: validated.__setitem__(
                e.state.epoch, {k: v.clone() for k, v in ema.module.state_dict().items()}))

    ema_eval = evaluator(ema, [best, Snapshot()])
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(_data(4), batch_size=2), network=net,
        optimizer=opt, loss_function=nn.L1Loss(), prepare_batch=prepare,
        train_handlers=[ema, ValidationHandler(validator=ema_eval, interval=1, epoch_level=True)],
    )
    trainer.run()
    assert int(ema.n_averaged) == trainer.state.iteration == 4

    def mae(module):
        module.eval()
        with torch.no_grad():
            return float(torch.stack([(module(d["image"][None], regions=d["regions"][None]) - d["label"][None]).abs().mean()
                                      for d in val_items]).mean())

    raw_eval = evaluator(net)
    raw_eval.run()
    assert ema_eval.state.metrics["val_mae"] == pytest.approx(mae(ema.module), rel=1e-5)
    assert raw_eval.state.metrics["val_mae"] == pytest.approx(mae(net), rel=1e-5)
    assert abs(ema_eval.state.metrics["val_mae"] - raw_eval.state.metrics["val_mae"]) > 1e-4  # they differ here
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sorted(validated) == [1, 2] and best.best_epoch in validated
    for k, v in validated[best.best_epoch].items():  # model.pt: the EMA weights of the best round
        assert torch.equal(saved[k], v), k
    plain = Tiny()
    plain.load_state_dict(saved)  # the plain network loads the EMA's model.pt as it is
