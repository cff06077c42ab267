"""What a new user meets on a fresh clone: tests that need nothing beside the repository, per-file progress,
caches outside the source tree, the README's MONAI Label command serving a checkpoint that exists, quiet logs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BUNDLES = ("ct", "pet", "pathology")


def _readme_block(marker: str) -> str:
    """The bash block after ``<!-- marker -->`` in the README, continuation lines joined."""
    text = README.read_text()
    assert f"<!-- {marker} -->" in text, f"README.md has no <!-- {marker} --> block"
    block = text.split(f"<!-- {marker} -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").strip()


def _clone_files() -> list[str]:
    """The repository's files as a clone has them (tracked, plus new files not ignored), relative paths."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = b""
    files = [f for f in out.decode().split("\0") if f]
    if files:
        return files
    # not a git checkout (e.g. an unpacked archive): everything but environments, outputs and caches
    skip = {".git", ".venv", "venv", ".ci-venv", ".pytest_cache", "__pycache__", "runs", "cache", "eval", "build", "dist"}
    return [
        p.relative_to(REPO).as_posix()
        for p in REPO.rglob("*")
        if (p.is_file() or p.is_symlink()) and not skip.intersection(p.relative_to(REPO).parts[:-1])
        and not p.name.endswith((".pyc", ".pt", ".ts"))
    ]


def _copy_clone(dest: Path) -> None:
    for rel in _clone_files():
        src, dst = REPO / rel, dest / rel
        if not (src.is_file() or src.is_symlink()):
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def test_tests_that_want_shared_fixtures_pass_or_skip_in_a_clone_with_nothing_beside_it(tmp_path):
    """The shared-fixture tests, run from a copy of the repository that has no ``../shared``: they pass or skip
    (naming the missing file), never fail; pytest shows one progress line per file."""
    users = sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / "tests").glob("test_*.py")
        if p.name != Path(__file__).name and re.search(r"\bshared_fixture\(|\bFIXTURES\b|\.\./shared", p.read_text())
    )
    assert "tests/test_partition_superpixel.py" in users, users
    clone = tmp_path / "fresh" / "monai-rat"
    _copy_clone(clone)
    assert not (clone.parent / "shared").exists()
    env = dict(os.environ, PYTHONPATH=str(clone), MONAI_RAT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *users],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert f"rootdir: {clone}" in out  # the copy's own tests and setup.cfg, not this checkout's
    assert re.search(r" \d+ passed", out) and not re.search(r"\d+ (failed|errors?)\b", out), out[-3000:]
    # the skips name what is missing: the clone's (absent) ../shared folder
    assert f"needs {clone.parent / 'shared' / 'fixtures'}" in out, out[-3000:]
    for f in users:  # per-file progress: "tests/test_x.py ..s.   [ 50%]"
        assert re.search(rf"^{re.escape(f)} [.sx]+\s+\[\s*\d+%\]$", out, re.M), out[-3000:]


def test_readme_test_command_shows_per_file_progress():
    cmd = _readme_block("test-command")
    pytest_words = shlex.split(cmd.rsplit("&&", 1)[-1])
    assert pytest_words[0] == "pytest" and "-q" not in pytest_words, cmd  # -q would print dots only


@pytest.mark.parametrize("bundle", BUNDLES)
def test_default_caches_are_in_the_user_cache_not_the_source_tree(bundle, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    from monai_rat.data import default_cache_dir

    monkeypatch.chdir(tmp_path)  # any working directory: the bundles are self-contained
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for env, root in ((None, home / ".cache" / "monai_rat"), (str(tmp_path / "mine"), tmp_path / "mine")):
        if env is None:
            monkeypatch.delenv("MONAI_RAT_CACHE", raising=False)
        else:
            monkeypatch.setenv("MONAI_RAT_CACHE", env)
        assert default_cache_dir() == root
        for name in ("train.json", "inference.json"):
            parser = ConfigParser()
            parser.read_config(str(REPO / "bundles" / bundle / "configs" / name))
            parser["dataset_dir"] = "/data/somewhere"  # the PET slice store exists only with real data
            parser.get_parsed_content("imports")
            caches = {"region_cache_dir": root / bundle / "regions"}
            if bundle == "pet" and name == "train.json":
                caches["slice_cache_dir"] = root / "pet" / "slices"
            for cid, expected in caches.items():
                value = Path(parser.get_parsed_content(cid))
                assert value == expected, f"bundles/{bundle}/configs/{name}: {cid} = {value}"
                assert not value.resolve().is_relative_to(REPO.resolve())


def test_readme_monailabel_command_serves_the_checkpoint_the_main_command_trains(tmp_path, monkeypatch):
    """The README's server command names the file the main command's demo training writes, with the settings
    that checkpoint needs; the app's bundle loads such a checkpoint from there (no HTTP 503)."""
    from monai.bundle import ConfigParser

    from monai_rat.apps.monailabel.bundles import CheckpointError, RATBundle, parse_overrides

    words = shlex.split(_readme_block("monailabel-command"))
    assert "start_server" in words
    conf = {words[i + 1]: words[i + 2] for i, w in enumerate(words) if w == "--conf"}
    assert conf.get("models") == "ct", conf
    main = shlex.split(_readme_block("main-command").rsplit("&&", 1)[-1])
    assert main[:6] == ["python", "-m", "monai.bundle", "run", "training", "--config_file"] and len(main) == 7, main
    # where that training run writes its best checkpoint, and the network size it trains
    monkeypatch.chdir(REPO)
    train = ConfigParser()
    train.read_config(str(REPO / main[6]))
    train["bundle_root"] = os.path.dirname(main[6])  # what monai_rat.bundle.bundle_root() gives that command line
    train.get_parsed_content("imports")
    best = train.get("validate#best_saver")["filename"]
    assert conf.get("ct.ckpt_path") == os.path.join(train.get_parsed_content("ckpt_dir"), best), conf
    demo = train.get_parsed_content("schedules")["demo"]
    assert int(conf.get("ct.feature_size", -1)) == demo["feature_size"], conf
    # a checkpoint of that training network, where that run writes it, in a copy of the bundles
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "bundles" / "ct", repo / "bundles" / "ct", symlinks=True,
                    ignore=shutil.ignore_patterns("runs", "cache", "*.pt"))  # fmt: skip
    train["feature_size"] = demo["feature_size"]
    net = train.get_parsed_content("network_def", lazy=False)
    ckpt = repo / conf["ct.ckpt_path"]
    ckpt.parent.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt)
    monkeypatch.chdir(repo)  # the server starts from the repository root
    served = RATBundle("ct", repo / "bundles" / "ct", parse_overrides(conf, ["ct"])["ct"])
    assert served.ckpt_path == ckpt.absolute()
    served.load_network()  # what restore_ct does first; a missing or unfitting file is the 503
    with pytest.raises(CheckpointError):  # without the README's settings: the bundle's own (missing) models/model.pt
        RATBundle("ct", repo / "bundles" / "ct").load_network()


def test_monai_rat_quiets_only_the_nvimgcodec_notices(monkeypatch, caplog):
    """MONAI says it twice for every LoadImage without nvImageCodec; monai_rat's filters drop exactly those two
    messages (a bundle command's own log is checked in test_bundle_ct.py)."""
    import logging
    import warnings

    from conftest import pydicom_test_file
    from monai.transforms import LoadImage

    from monai_rat import notices

    ct = pydicom_test_file("CT_small.dcm")
    log = logging.getLogger(notices.NVIMGCODEC_LOGGER)
    monkeypatch.setattr(log, "filters", [])  # as before `import monai_rat`: both messages come (the check can fail)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=re.escape(notices.NVIMGCODEC_WARNING)):
        LoadImage(image_only=True)(ct)
    assert notices.NVIMGCODEC_LOG in caplog.text
    monkeypatch.setenv(notices.SHOW_ALL_ENV, "1")
    assert notices.quiet_third_party_notices() is False and not log.filters  # the opt-out installs nothing
    monkeypatch.delenv(notices.SHOW_ALL_ENV)
    caplog.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert notices.quiet_third_party_notices() is True
        with caplog.at_level(logging.WARNING):
            LoadImage(image_only=True)(ct)
        warnings.warn("a warning of our own stays visible")
    assert notices.NVIMGCODEC_LOG not in caplog.text
    assert [str(w.message) for w in seen] == ["a warning of our own stays visible"]
