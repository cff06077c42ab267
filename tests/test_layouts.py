"""Token-major blocks equal their NCHW definitions; gradients keep standard strides (no DDP warning)."""

from __future__ import annotations

import os
import re
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from monai_rat.networks import RAT
from monai_rat.networks.blocks import LayerNorm2d, NAFBlock


def _ln_nchw(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm2d written out in NCHW (the NAFNet / reference-code form)."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    return (x - mu) / (var + norm.eps).sqrt() * norm.weight[:, None, None] + norm.bias[:, None, None]


def _nafblock_nchw(blk: NAFBlock, inp: torch.Tensor) -> torch.Tensor:
    """NAFBlock as the reference code writes it: its own conv modules on NCHW tensors."""
    x = blk.sg(blk.conv2(blk.conv1(_ln_nchw(blk.norm1, inp))))
    x = blk.conv3(x * blk.sca(x))
    y = inp + x * blk.beta
    x = blk.conv5(blk.sg(blk.conv4(_ln_nchw(blk.norm2, y))))
    return y + x * blk.gamma


@pytest.mark.parametrize("channels_last_input", [False, True])
def test_nafblock_equals_its_nchw_definition(channels_last_input):
    torch.manual_seed(0)
    blk = NAFBlock(8).double()
    with torch.no_grad():
        blk.beta.normal_()
        blk.gamma.normal_()
    ref = NAFBlock(8).double()
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(2, 8, 12, 10, dtype=torch.float64)
    xa = (x.contiguous(memory_format=torch.channels_last) if channels_last_input else x.clone()).requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = blk(xa), _nafblock_nchw(ref, xb)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for (n, pa), (_, pb) in zip(blk.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)
        assert pa.grad.stride() == pa.stride(), (n, pa.grad.stride(), pa.stride())


def test_layernorm2d_returns_standard_strides_and_the_written_out_values():
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    y = norm(x)
    assert y.is_contiguous() and y.stride() == x.stride()
    torch.testing.assert_close(y, _ln_nchw(norm, x), atol=1e-5, rtol=1e-5)


def test_every_parameter_gradient_has_its_parameters_strides():
    """What DDP checks: a gradient whose strides differ from its parameter's (even in a size-1 axis) is copied and warned about."""
    model = RAT(feature_size=8, num_groups=1, layers_per_group=1)
    model(torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))).square().mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()]
    assert not bad, bad


def _ddp_worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = torch.nn.parallel.DistributedDataParallel(RAT(feature_size=8, num_groups=1, layers_per_group=1))
        g = torch.Generator().manual_seed(rank)
        x, r = torch.rand(2, 1, 32, 32, generator=g), torch.randint(0, 3, (2, 1, 32, 32), generator=g)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net(x, r).square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in net.module.parameters()]).numpy()  # by value: the worker exits first
        queue.put((rank, [str(w.message)[:200] for w in caught], grads))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_step_on_cpu_has_no_grad_stride_warning():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted([queue.get(timeout=300) for _ in procs], key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
    for rank, messages, _ in results:
        assert not [m for m in messages if re.search("stride", m, re.I)], (rank, messages)
    torch.testing.assert_close(torch.from_numpy(results[0][2]), torch.from_numpy(results[1][2]))  # all-reduced: both ranks hold the same gradients
