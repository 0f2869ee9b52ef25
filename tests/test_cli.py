"""The hive-gpu command: argument checks of bench, inspect, info --dim, help on every option."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from helpers import dtype_store, make_ids
from reference import METRICS

import hive_gpu
from hive_gpu import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``hive-gpu argv``; argparse's own exits included."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- bench -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "-5"], "--n must be at least 1"),
        (["--dim", "0"], "--dim must be at least 1"),
        (["--queries", "0"], "--queries must be at least 1"),
        (["--k", "0"], "--k must be at least 1"),
        (["--k", "-1"], "--k must be at least 1"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--n", "5", "--k", "6"], "--k (6) must not exceed --n (5)"),
        (["--k", "x"], "invalid int value"),
    ],
)
def test_bench_refuses_bad_sizes_with_status_2(capsys, argv, says):
    rc, out, err = run(capsys, "bench", "--backend", "cpu", *argv)
    assert rc == 2
    assert says in err and "usage: hive-gpu bench" in err
    assert out == ""  # refused before anything ran


def test_bench_reports_errors_of_the_library_with_status_2(capsys):
    rc, _, err = run(capsys, "bench", "--backend", "quantum", "--n", "10", "--k", "2", "--repeats", "1")
    assert rc == 2 and err.startswith("hive-gpu: ") and "quantum" in err
    rc, _, err = run(capsys, "bench", "--backend", "cpu", "--n", "10", "--k", "2", "--dim", str(2**20 + 1))
    assert rc == 2 and "dimension" in err


def test_bench_runs_a_small_workload(capsys):
    rc, out, _ = run(capsys, "bench", "--backend", "cpu", "--n", "300", "--dim", "8", "--queries", "4",
                     "--k", "5", "--repeats", "2")
    assert rc == 0
    assert "median of 2 runs" in out and "nan" not in out
    recall = next(line for line in out.splitlines() if line.startswith("recall"))
    assert recall.split()[-1] == "1.000"


def _subcommand_parsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_and_subcommand_has_help():
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in sub._choices_actions} == {"info", "inspect", "bench"}
    assert all(c.help for c in sub._choices_actions)
    for name, parser in _subcommand_parsers(p).items():
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


# -- inspect ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_inspect_prints_the_header_after_checking_every_section(capsys, ctx, rng, tmp_path, metric):
    s = ctx.create_storage(6, metric)
    s.add_vectors(make_ids(40), rng.standard_normal((40, 6)).astype(np.float32), [{"i": str(i)} for i in range(40)])
    s.remove_vector("v3")
    p = tmp_path / "s.hgv"
    s.save(p)
    rc, out, _ = run(capsys, "inspect", str(p))
    assert rc == 0
    fields = {line[:15].strip(): line[15:].strip() for line in out.splitlines()}
    assert fields["count"] == "39" and fields["dimension"] == "6"
    assert fields["metric"] == metric.value and fields["dtype"] == "float32"
    assert fields["format version"] == "3" and fields["next ordinal"] == "40"
    assert fields["size"] == f"{p.stat().st_size:,} bytes"
    assert fields["checksums"].startswith("verified")
    rc, out, _ = run(capsys, "inspect", "--json", str(p))
    data = json.loads(out)
    assert rc == 0 and data["ok"] and data["checksums_verified"]
    assert (data["count"], data["dimension"], data["metric"], data["dtype"]) == (39, 6, metric.value, "float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_inspect_shows_the_dtype(capsys, ctx, rng, tmp_path, dtype):
    s = dtype_store(ctx, 8, "cosine", dtype)
    s.add_vectors(make_ids(10), rng.standard_normal((10, 8)).astype(np.float32))
    p = tmp_path / "s.hgv"
    s.save(p)
    rc, out, _ = run(capsys, "inspect", str(p))
    fields = {line[:15].strip(): line[15:].strip() for line in out.splitlines()}
    assert rc == 0 and fields["dtype"] == dtype and fields["format version"] == "3"
    rc, out, _ = run(capsys, "inspect", "--json", str(p))
    assert json.loads(out)["dtype"] == dtype


def test_inspect_finds_damage_anywhere_in_the_file(capsys, ctx, rng, tmp_path):
    s = ctx.create_storage(4, "cosine")
    s.add_vectors(make_ids(50), rng.standard_normal((50, 4)).astype(np.float32))
    raw = bytearray(s.to_bytes())
    p = tmp_path / "s.hgv"
    # A flipped bit in the last row: found only by reading the vectors section to its end.
    raw[-6] ^= 0x01
    p.write_bytes(bytes(raw))
    rc, out, _ = run(capsys, "inspect", str(p))
    assert rc == 1 and "corrupt" in out and "vectors" in out
    rc, out, _ = run(capsys, "inspect", "--json", str(p))
    assert rc == 1 and json.loads(out)["ok"] is False


def test_inspect_of_a_missing_file_is_an_error(capsys, tmp_path):
    rc, out, err = run(capsys, "inspect", str(tmp_path / "missing.hgv"))
    assert rc == 2 and out == "" and "No such file" in err


# -- info ------------------------------------------------------------------------------------


def test_info_dim_gives_the_rows_that_fit_per_device_and_dtype(capsys):
    rc, out, _ = run(capsys, "info", "--json", "--dim", "768")
    assert rc == 0
    backends = json.loads(out)["backends"]
    cpu = next(b for b in backends if b["backend"] == "cpu")
    dev = cpu["devices"][0]
    assert dev["row_bytes"] == {"float32": 768 * 4 + 16, "float16": 768 * 2 + 16, "bfloat16": 768 * 2 + 16}
    # A host that does not say how much memory is free (some virtual machines) gives None.
    for dtype, row in dev["row_bytes"].items():
        expected = None if "vram_available" in dev["unknown"] else dev["vram_available"] // row
        assert dev["rows_that_fit"][dtype] == expected
    assert "float32" in dev["dtypes"]
    for b in backends:
        for d in b["devices"]:
            if "error" not in d:
                assert set(d["rows_that_fit"]) == {"float32", "float16", "bfloat16"}
    rc, out, _ = run(capsys, "info", "--dim", "768")
    assert rc == 0 and "rows of dim 768 (float32)" in out and "rows of dim 768 (float16)" in out
    assert "rows of dim 768 (bfloat16)" in out and "dtypes" in out
    rc, _, err = run(capsys, "info", "--dim", "0")
    assert rc == 2 and "--dim" in err


def test_info_names_every_backend_with_its_reason(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    for name, why in hive_gpu.backend_status().items():
        if why:
            assert f"[{name}] unavailable: {why}" in out
        else:
            assert f"[{name}] device 0" in out
