"""Hostile but realistic command lines: each one is refused in one line with exit code 2.

Every case runs the real CLI (``hwprune.cli.main`` in-process, a few through
``python -m hwprune``) and asserts: exit code 2, exactly one line on stderr that
starts with ``error:``, no traceback, the expected words in the message, and,
where the command was pointed at a run's files, that nothing there changed.
Add a case here for every defect found (issue 16).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwprune.cli import main

FAST_ORT = "onnxruntime:cpu?threads=1&warmup=1&min_runs=5&max_runs=50&min_time=0.02&max_time=0.5"

# --------------------------------------------------------------------------- shared inputs


def write_onnx(path: Path, *, external: bool = False) -> Path:
    """A conv -> relu -> global-pool net, input 'input' [1, 3, 16, 16]; weights outside on request."""
    import onnx

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["out"]),
        ],
        "hostile_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 1, 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.stem + ".data",
                        size_threshold=0)  # fmt: skip
    else:
        path.write_bytes(model.SerializeToString())
    return path


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: a run's record, to prove nothing was touched.

    An SQLite cache is compared by its rows: SQLite may fold its -wal file into the
    main file whenever the last connection closes, which changes bytes, not content.
    """
    import sqlite3

    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".sqlite":
            conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
            rows = conn.execute("SELECT key, measurement FROM measurements ORDER BY key")
            data = repr(rows.fetchall()).encode()
            conn.close()
        else:
            data = p.read_bytes()
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A pruned run, an ONNX file, a width-0.25 checkpoint and image folders, made once."""
    import torch
    from PIL import Image

    from hwprune.models import get_model, save_checkpoint

    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWPRUNE_HOME", str(root / "home"))
        mp.setenv("HWPRUNE_CACHE", str(root / "cache.sqlite"))
        run = root / "run"
        code = main(["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget",
                     "flops<=50%", "--agent", "uniform", "--evaluations", "2",
                     "--finetune-epochs", "0", "--out", str(run), "--quiet", "--json"])  # fmt: skip
        assert code == 0
    torch.manual_seed(0)
    ckpt = root / "w025.pt"
    model = get_model("vgg11_cifar", num_classes=10, width=0.25)
    save_checkpoint(model, ckpt, meta={"model": "vgg11_cifar", "num_classes": 10,
                                       "width": 0.25, "input_size": 32})  # fmt: skip
    rng = np.random.default_rng(0)
    for folder, classes in (("imgs", ("a", "b")), ("one_class", ("a",))):
        for c in classes:
            d = root / folder / c
            d.mkdir(parents=True)
            for i in range(10):
                pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.jpg")
    whole = (root / "imgs" / "a" / "0.jpg").read_bytes()
    (root / "imgs" / "a" / "0.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (root / "imgs" / "b" / "0.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # corrupt
    (root / "notes.txt").write_text("a regular file\n")
    (root / "folder").mkdir()
    (root / "existing.onnx").write_bytes(b"keep me")
    write_onnx(root / "net.onnx")
    write_onnx(root / "ext" / "net.onnx", external=True)
    write_onnx(root / "ext_lost" / "net.onnx", external=True)
    (root / "ext_lost" / "net.data").unlink()
    (root / "garbage.onnx").write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    shutil.copytree(run, root.parent / "pristine-run")
    yield {"root": root, "run": run, "ckpt": ckpt, "pristine": root.parent / "pristine-run"}


def expect_one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


Case = tuple[str, Callable[[dict[str, Path]], list[str]], str]

# ------------------------------------------------------------------------------- cases

BUDGETS = [
    ("infinite", "params<=1e999", "must be a finite number"),
    ("overflow_after_unit", "params<=1e308G", "too large"),
    ("arabic_digit", "latency<=\u0665ms", "non-ASCII character '\u0665'"),
    ("fullwidth_digit", "params<=\uff11M", "non-ASCII character '\uff11'"),
    ("lookalike_angle", "latency\u2039=\u0665ms", "non-ASCII character '\u2039'"),
    ("unicode_le", "latency\u22645ms", "write it in ASCII"),
    ("nbsp", "latency<=5ms\u00a0", "U+00A0"),
    ("no_unit", "latency<=5", "needs a unit"),
    ("strict_less", "latency<5ms", "only '<=' bounds"),
    ("negative", "params<=-1", "positive"),
    ("nan", "params<=nan", "not a number"),
    ("over_100_percent", "latency<=150%", "at most 100%"),
    ("unknown_quantity", "energy<=5J", "which no oracle measures"),
    ("wrong_unit", "memory<=5ms", "does not fit memory"),
]

ORACLE_SPECS = [
    ("torch_threads_huge", "torch:cpu?threads=1000000", "from 1 to"),
    ("ort_threads_huge", "onnxruntime:cpu?threads=1000000", "this machine's CPU count"),
    ("openvino_threads_huge", "openvino:cpu?threads=1000000", "this machine's CPU count"),
    ("ort_threads_zero", "onnxruntime:cpu?threads=0", "from 1 to"),
    ("ort_threads_text", "onnxruntime:cpu?threads=many", "must be an integer"),
    ("ort_unknown_device", "onnxruntime:gpu", "runs on cpu, cuda, tensorrt"),
    ("ort_unknown_setting", "onnxruntime?bogus=1", "has no setting 'bogus'"),
    ("ort_nan_time", "onnxruntime:cpu?min_time=nan", "must be a number"),
    ("typo", "onnxruntme", "Did you mean 'onnxruntime'"),
    ("empty", " ", "expected an oracle spec"),
    ("bad_settings", "onnxruntime?=1", "key=value"),
    ("torch_on_onnx", "torch:cpu", "measures a PyTorch module"),
    ("params_batch_zero", "params?batch=0", "batch"),
]


def _measure(*extra: str, model: str = "net.onnx") -> Callable[[dict[str, Path]], list[str]]:
    return lambda w: ["measure", str(w["root"] / model), *extra]


MEASURE: list[Case] = [
    ("huge_input_shape", _measure("--oracle", FAST_ORT, "--input-shape", "input=1x3x20000x20000"),
     "of memory available"),
    ("huge_batch", _measure("--oracle", FAST_ORT, "--batch", "1000000"), "of memory available"),
    ("batch_zero", _measure("--batch", "0"), "--batch must be a positive integer"),
    ("batch_text", _measure("--batch", "lots"), "invalid int value"),
    ("shape_zero", _measure("--input-shape", "input=0x3x16x16"), "positive integers"),
    ("shape_unknown_input", _measure("--input-shape", "image=1x3x16x16", "--input-shape",
                                     "input=1x3x16x16"), "no input named"),
    ("shape_wrong_rank", _measure("--input-shape", "input=1x3x16"), "has rank 4"),
    ("missing_file", _measure(model="nope.onnx"), "model file not found"),
    ("folder_as_model", _measure(model="folder"), "got the directory"),
    ("garbage_model", _measure(model="garbage.onnx"), "is not an ONNX model"),
    ("cache_is_folder", _measure("--cache", "{root}/folder", "--oracle", "params"),
     "is a folder"),
    ("external_data_missing", _measure("--oracle", FAST_ORT, model="ext_lost/net.onnx"),
     "external weight data"),
    ("unknown_option", _measure("--orcale", "params"), "unrecognized arguments"),
]  # fmt: skip


def _export(*extra: str, source: str = "run") -> Callable[[dict[str, Path]], list[str]]:
    return lambda w: ["export", str(w["root"] / source), *extra]


EXPORT: list[Case] = [
    ("onnx_over_weights", _export("--onnx", "{run}/model.pt"), "would overwrite model.pt"),
    ("onnx_over_weights_forced", _export("--onnx", "{run}/model.pt", "--overwrite"),
     "would overwrite model.pt"),
    ("onnx_over_run_onnx", _export("--onnx", "{run}/model.onnx", "--force"),
     "would overwrite model.onnx"),
    ("onnx_over_log_from_pt", _export("--onnx", "{run}/episodes.jsonl", source="run/model.pt"),
     "would overwrite episodes.jsonl"),
    ("tensorrt_over_report", _export("--onnx", "{root}/new.onnx", "--tensorrt",
                                     "{run}/report.json"), "would overwrite report.json"),
    ("onnx_existing", _export("--onnx", "{root}/existing.onnx"), "pass --overwrite"),
    ("openvino_at_weights", _export("--onnx", "{root}/ov.onnx", "--openvino", "{run}/model.pt"),
     "is a file"),
    ("openvino_is_file", _export("--onnx", "{root}/ov.onnx", "--openvino", "{root}/notes.txt"),
     "give a folder"),
    ("onnx_is_folder", _export("--onnx", "{root}/folder"), "is a folder"),
    ("onnx_below_file", _export("--onnx", "{root}/notes.txt/m.onnx"), "is a file, not a folder"),
    ("same_target_twice", _export("--onnx", "{root}/a.onnx", "--tensorrt", "{root}/a.onnx"),
     "also given"),
    ("atol_negative", _export("--onnx", "{root}/x.onnx", "--atol", "-1"), "--atol must be"),
    ("atol_nan", _export("--onnx", "{root}/x.onnx", "--atol", "nan"), "--atol must be"),
    ("atol_text", _export("--onnx", "{root}/x.onnx", "--atol", "tiny"), "invalid float value"),
    ("opset_too_old", _export("--onnx", "{root}/x.onnx", "--opset", "5"), "at least 7"),
    ("source_missing", _export("--onnx", "{root}/x.onnx", source="nowhere"), "not found"),
    ("source_plain_folder", _export("--onnx", "{root}/x.onnx", source="folder"), "not found"),
    ("source_not_checkpoint", _export("--onnx", "{root}/x.onnx", source="notes.txt"),
     "not a torch.save file"),
]  # fmt: skip


def _compare(*extra: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda w: ["compare-oracles", "--model", "vgg11_cifar", "--out",
                      str(w["root"] / "cmp"), *extra]  # fmt: skip


COMPARE: list[Case] = [
    ("min_keep_zero", _compare("--min-keep", "0"), "--min-keep must be in (0, 1]"),
    ("min_keep_above_one", _compare("--min-keep", "1.5"), "--min-keep must be in (0, 1]"),
    ("samples_two", _compare("--samples", "2"), "at least 3"),
    ("batch_zero", _compare("--batch", "0"), "--batch must be a positive integer"),
    ("batch_huge", _compare("--oracle", "params", "--oracle", FAST_ORT, "--batch", "1000000"),
     "of memory available"),
    ("input_size_huge", _compare("--oracle", "params", "--input-size", "200000"),
     "of memory available"),
    ("oracle_twice", _compare("--oracle", "params", "--oracle", "params"), "listed twice"),
    ("threads_huge", _compare("--oracle", "torch:cpu?threads=1000000"), "from 1 to"),
    ("weights_missing", _compare("--weights", "{root}/nope.pt"), "not found"),
    ("weights_not_torch", _compare("--weights", "{root}/notes.txt"), "not a torch.save file"),
    ("width_zero", _compare("--width", "0"), "width must be a number in (0, 16]"),
    ("wrong_width_for_weights", _compare("--weights", "{ckpt}", "--width", "0.5"), "shape"),
]  # fmt: skip


def _train(*extra: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda w: ["train", "--model", "vgg11_cifar", "--width", "0.25", "--epochs", "1",
                      "--out", str(w["root"] / "t.pt"), "--quiet", *extra]  # fmt: skip


TRAIN: list[Case] = [
    ("one_class_folder", _train("--data", "imagefolder:{root}/one_class", "--input-size", "16"),
     "at least 2 classes"),
    ("image_folder_missing", _train("--data", "imagefolder:{root}/nope"), "does not exist"),
    ("cifar_missing", _train("--data", "cifar10:{root}/nope"), "cifar10:/path/to/dir"),
    ("unknown_dataset", _train("--data", "mnist"), "unknown dataset 'mnist'"),
    ("epochs_text", _train("--data", "digits", "--epochs", "ten"), "invalid int value"),
    ("width_zero", _train("--data", "digits", "--width", "0"), "width must be a number"),
    ("device_tpu", _train("--data", "digits", "--device", "tpu"), "tpu"),
    ("epochs_zero", _train("--data", "digits", "--epochs", "0"), "--epochs must be"),
    ("lr_nan", _train("--data", "digits", "--lr", "nan"), "--lr must be a finite number"),
    ("weight_decay_negative", _train("--data", "digits", "--weight-decay", "-1"),
     "--weight-decay must be"),
    ("num_classes_zero", _train("--data", "digits", "--num-classes", "0"),
     "--num-classes must be"),
    ("label_smoothing_one", _train("--data", "digits", "--label-smoothing", "1"),
     "--label-smoothing must be"),
]  # fmt: skip


def _prune_budget(budget: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda w: ["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", budget,
                      "--agent", "uniform", "--out", str(w["root"] / "never"), "--quiet"]  # fmt: skip


PRUNE_ORACLE: list[Case] = [
    ("oracle_unknown_quantity",
     lambda w: _prune_budget("flops<=50%")(w) + ["--oracle", "energy=params"],
     "unknown quantity 'energy' for --oracle"),
]  # fmt: skip

CASES: list[Case] = (
    [(f"budget-{i}", _prune_budget(b), m) for i, b, m in BUDGETS]
    + PRUNE_ORACLE
    + [(f"spec-{i}", _measure("--oracle", s), m) for i, s, m in ORACLE_SPECS]
    + [(f"measure-{i}", f, m) for i, f, m in MEASURE]
    + [(f"export-{i}", f, m) for i, f, m in EXPORT]
    + [(f"compare-{i}", f, m) for i, f, m in COMPARE]
    + [(f"train-{i}", f, m) for i, f, m in TRAIN]
)


def _fill(argv: list[str], w: dict[str, Path]) -> list[str]:
    return [a.format(root=w["root"], run=w["run"], ckpt=w["ckpt"]) for a in argv]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_exit_2(
    build: Callable[[dict[str, Path]], list[str]],
    message: str,
    world: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = digest(world["run"])
    existing = (world["root"] / "existing.onnx").read_bytes()
    try:
        code = main(_fill(build(world), world))
        out, err = capsys.readouterr()
        line = expect_one_line_error(code, out, err)
        assert message in line
        # Nothing measured or written by the run is lost or changed, and no temp file is left.
        assert digest(world["run"]) == before
        assert (world["root"] / "existing.onnx").read_bytes() == existing
        assert not list(world["root"].glob("*.tmp")) and not list(world["run"].glob("*.tmp"))
        assert not (world["root"] / "never").exists()
    finally:
        # A case that fails must not fail the next ones: put the shared inputs back.
        shutil.rmtree(world["root"] / "never", ignore_errors=True)
        (world["root"] / "existing.onnx").write_bytes(existing)
        for tmp in [*world["root"].glob("*.tmp"), *world["run"].glob("*.tmp")]:
            tmp.unlink()
        if digest(world["run"]) != before:
            shutil.rmtree(world["run"])
            shutil.copytree(world["pristine"], world["run"])


@pytest.mark.parametrize(
    "argv",
    [
        ["measure", "{root}/net.onnx", "--oracle", "torch:cpu?threads=1000000"],
        ["export", "{run}", "--onnx", "{run}/model.pt"],
    ],
    ids=["threads_abort", "export_over_weights"],
)
def test_hostile_input_in_a_real_process(argv: list[str], world: dict[str, Path]) -> None:
    """The same contract through ``python -m hwprune``: no abort, no traceback, exit code 2."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "hwprune", *_fill(argv, world)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    expect_one_line_error(proc.returncode, proc.stdout, proc.stderr)


# ----------------------------------------------------------------- what works where it broke


def test_hostile_suite_covers_every_group() -> None:
    groups = {c[0].split("-")[0] for c in CASES}
    assert groups == {"budget", "oracle_unknown_quantity", "spec", "measure", "export",
                      "compare", "train"}  # fmt: skip
    assert len(CASES) == len({c[0] for c in CASES})


def test_export_to_a_folder_leaves_no_tmp_and_export_elsewhere_works(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwprune.api import load_pruned
    from hwprune.errors import ExportError
    from hwprune.export.final import final_export

    # The library call too: a folder in place of the file is one ExportError, no *.tmp.
    target = tmp_path / "taken"
    target.mkdir()
    module = load_pruned(world["run"])
    with pytest.raises(ExportError, match="cannot write the ONNX file"):
        final_export(module, input_shape=(1, 3, 32, 32), onnx_path=target)
    assert list(tmp_path.iterdir()) == [target]
    out = tmp_path / "copy.onnx"
    assert main(["export", str(world["run"]), "--onnx", str(out)]) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert main(["export", str(world["run"]), "--onnx", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(world["run"]), "--onnx", str(out), "--overwrite"]) == 0


def _make_read_only(paths: list[Path]) -> Callable[[], None]:
    """chmod a-w, and for root (whom permissions do not stop) the immutable attribute."""
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)
    undo = [lambda: [p.chmod(p.stat().st_mode | 0o200) for p in paths]]
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "+i", *map(str, paths)],
                                         capture_output=True).returncode == 0  # fmt: skip
        if not done:
            undo[0]()
            pytest.skip("running as root without chattr +i: cannot make a read-only file")
        undo.insert(0, lambda: subprocess.run([chattr, "-i", *map(str, paths)], check=True))

    def restore() -> None:
        for step in undo:
            step()

    return restore


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    # In-process, pytest's log capture holds what the CLI would print on stderr.
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_read_only_cache_is_read_and_not_replaced(
    world: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "ro"
    cache = folder / "oracles.sqlite"
    argv = ["measure", str(world["root"] / "net.onnx"), "--oracle", "params", "--oracle",
            "flops", "--cache", str(cache), "--json"]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert [m["cached"] for m in first] == [False, False]
    import sqlite3

    sqlite3.connect(cache).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    for extra in folder.glob("oracles.sqlite-*"):
        extra.unlink()
    before = digest(folder)
    restore = _make_read_only([cache, folder])
    try:
        argv_more = [*argv, "--oracle", "peak-memory"]
        assert main(argv_more) == 0
        out, err = capsys.readouterr()
    finally:
        restore()
    got = json.loads(out)
    assert [m["cached"] for m in got] == [True, True, False]  # read from it, measured the rest
    assert [m["value"] for m in got[:2]] == [m["value"] for m in first]
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "cannot be written" in warnings[0], warnings
    # stderr holds the progress lines alone (the warning is logged once, above)
    assert all(line.startswith("measure: ") for line in err.strip().splitlines()), err
    assert digest(folder) == before  # not renamed aside, not written


def test_corrupt_cache_in_a_read_only_folder_measures_without_a_cache(
    world: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    cache = folder / "oracles.sqlite"
    cache.write_bytes(b"this is not a database" * 100)
    restore = _make_read_only([cache, folder])
    try:
        code = main(["measure", str(world["root"] / "net.onnx"), "--oracle", "params",
                     "--cache", str(cache), "--json"])  # fmt: skip
        out, err = capsys.readouterr()
    finally:
        restore()
    assert code == 0, err
    assert json.loads(out)[0]["value"] == 216
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "measuring without a cache" in warnings[0], warnings
    assert cache.read_bytes() == b"this is not a database" * 100


def test_measure_uses_hwprune_home_for_its_cache(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HWPRUNE_CACHE", raising=False)
    monkeypatch.setenv("HWPRUNE_HOME", str(tmp_path / "home"))
    assert main(["measure", str(world["root"] / "net.onnx"), "--oracle", "params"]) == 0
    assert (tmp_path / "home" / "oracles.sqlite").is_file()
    from hwprune.data import default_root

    monkeypatch.delenv("HWPRUNE_DATA", raising=False)
    assert default_root() == tmp_path / "home" / "data"


def test_external_data_is_read_beside_the_model_from_any_folder(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # not the model's folder
    model = world["root"] / "ext" / "net.onnx"
    assert main(["measure", str(model), "--oracle", "params", "--oracle", FAST_ORT,
                 "--no-cache", "--json"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    assert got[0]["value"] == 216 and got[1]["value"] > 0


def test_compare_oracles_json_is_strict_and_reads_width_from_the_checkpoint(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --min-keep 1: every sample is dense, correlations are undefined: null, never NaN.
    argv = ["compare-oracles", "--model", "vgg11_cifar", "--weights", str(world["ckpt"]),
            "--oracle", "params", "--oracle", "flops", "--samples", "3", "--min-keep", "1",
            "--out", str(tmp_path / "cmp"), "--json"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert data["pairs"][0]["spearman"] is None
    json.loads((tmp_path / "cmp" / "comparison.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # fmt: skip
    # The width-0.25 checkpoint loaded: its dense parameter count, not width 1.0's.
    from hwprune.models import get_model

    small = sum(p.numel() for p in get_model("vgg11_cifar", width=0.25).parameters())
    assert abs(data["values"]["params"][0] - small) / small < 0.05


def test_images_that_cannot_be_read_are_skipped_with_a_warning_naming_them(
    world: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from hwprune.data import get_dataset

    with caplog.at_level("WARNING"):
        data = get_dataset(f"imagefolder:{world['root'] / 'imgs'}", input_size=16)
    assert sum(data.sizes().values()) == 18  # 20 files, 2 skipped
    text = caplog.text
    assert "skipped 2 unreadable image files" in text
    assert str(world["root"] / "imgs" / "a" / "0.jpg") in text
    assert str(world["root"] / "imgs" / "b" / "0.jpg") in text
    for split in (data.train, data.search, data.test):
        for i in range(len(split)):
            assert split[i][0].shape == (3, 16, 16)


def test_an_image_broken_after_loading_is_named_in_one_error(tmp_path: Path) -> None:
    from hwprune.data.builtin import _load_image
    from hwprune.errors import DataError

    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"x\.png' cannot be read"):
        _load_image(str(bad))


def test_episode_log_skips_records_that_are_not_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hwprune.evaluate.log import EpisodeLog

    path = tmp_path / "episodes.jsonl"
    path.write_bytes(b'{"n": 1}\n42\nnull\n[1, 2]\n"text"\n\xff\xfe\n{"n": 2}\n{"n": 3')
    with caplog.at_level("WARNING"):
        records = EpisodeLog(path).records()
    assert records == [{"n": 1}, {"n": 2}]  # the unfinished last line is skipped too
    assert "line 2" in caplog.text and "int" in caplog.text and "NoneType" in caplog.text
