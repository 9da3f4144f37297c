"""The benchmarks under experiments/ run end to end on tiny sizes.

speed_benchmark.py beside another checkout (itself): the per-frame CSV marks the warm-up and the memory writes
where the settings put them, the two contenders agree exactly, and the profile rates the matmuls it saw with FLOP
counts that match the attention's shapes worked out by hand. attention_paths.py: its formulations agree."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "experiments" / "speed_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_curve_and_rates_the_attention_matmuls(benchmark, tmp_path, capsys):
    # this checkout against itself loaded as another package (--compare-with): same seed, same weights
    results = benchmark.main(["--size", "65x65", "--frames", "4", "--warmup", "2", "--gap", "3", "--profile", "3",
                              "--threads", "2", "--out", str(tmp_path), "--tag", "tiny", "--json",
                              "--compare-with", str(ROOT)])
    with open(tmp_path / "tiny.csv") as f:
        rows = list(csv.DictReader(f))
    for label in ("old", "new"):
        mine = [r for r in rows if r["contender"] == label]
        assert [int(r["frame"]) for r in mine] == [1, 2, 3, 4, 5, 6]
        assert [int(r["timed"]) for r in mine] == [0, 0, 1, 1, 1, 1]         # --warmup 2
        assert [int(r["memory_write"]) for r in mine] == [0, 0, 1, 0, 0, 1]  # every --gap 3 frames
        assert all(int(r["page_faults"]) >= 0 for r in mine)  # counted around each CPU frame
    printed = capsys.readouterr().out
    summaries = [line for line in printed.splitlines() if line.startswith("[{")]  # printed before the profile
    assert len(summaries) == 1 and printed.index(summaries[0]) < printed.index("profile:")
    old, new = json.loads(summaries[0])
    assert new["size"] == "65x65" and new["frames"] == 4 and new["memory"] == "MCAMemory"
    assert old["label"] == "old" and new["max_prob_diff"] == 0.0 and new["label_diff"] == 0.0  # the same network
    summary = new

    # 65x65 frames -> a 5x5 token map (stride 16) = 25 queries; MCA's long-term memory holds 2 slots of 25
    # tokens; values are 1024 wide (visual | identity, 512 each): softmax(QK^T) V costs 2 * 25 * 50 * 1024 FLOPs
    assert "heaviest matmuls / convolutions" in printed
    by_shape = {(r["op"], json.dumps(r["shapes"])): r for r in results[-1]["profile_ops"]}
    long_term = by_shape[("bmm", json.dumps([[1, 25, 50], [1, 50, 1024]]))]
    assert long_term["gflop_per_call"] == pytest.approx(2 * 25 * 50 * 1024 / 1e9)
    assert long_term["calls_per_frame"] == pytest.approx(3)  # one per propagation layer
    self_attention = by_shape[("bmm", json.dumps([[1, 25, 25], [1, 25, 1024]]))]
    assert self_attention["gflop_per_call"] == pytest.approx(2 * 25 * 25 * 1024 / 1e9)
    for r in by_shape.values():
        assert r["gflops"] > 0 and r["fraction_of_peak"] == pytest.approx(r["gflops"] / summary["peak_gflops"])


@pytest.fixture(scope="module")
def older_checkout(tmp_path_factory):
    """A copy of this checkout whose ``InferenceSession`` predates ``compile`` and tensor frames, as ed3143d's (the
    README's before / after runs) does."""
    import shutil

    old = tmp_path_factory.mktemp("older")
    shutil.copytree(ROOT / "mavos", old / "mavos", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", old / "conf")
    session = old / "mavos" / "inference" / "session.py"
    text = session.read_text()
    assert "    tensor_frames = True" in text
    session.write_text(text.replace("self.compile", "self._compiled_step").replace("    tensor_frames = True", ""))
    return old


def test_compares_with_an_older_checkout_whose_session_has_no_compile_option(benchmark, older_checkout, tmp_path):
    """``--compare-with`` is for the code before a change: an older session (no ``compile`` attribute, frames as
    arrays) runs beside this one, step for step."""
    results = benchmark.main(["--size", "65x65", "--frames", "2", "--warmup", "1", "--gap", "3", "--threads", "2",
                              "--no-flops", "--out", str(tmp_path / "out"), "--tag", "older", "--json",
                              "--compare-with", str(older_checkout)])
    old_run, new_run = results
    assert old_run["label"] == "old" and old_run["fell_back"] is None and old_run["frames"] == 2
    assert new_run["max_prob_diff"] == 0.0  # the same network, step for step


def test_with_compile_an_older_checkout_runs_eagerly_and_says_so(benchmark, older_checkout, capsys):
    """``--compile --compare-with <ed3143d>`` times this checkout's compiled step against the old eager one: the old
    session, which has no compile option, is made without it (not refused), and the run says so."""
    import torch

    contender = benchmark.Contender.from_checkout(older_checkout, "precompile")
    args = benchmark.build_parser().parse_args(["--compile"])
    session = contender.session(contender.build_network("mavos_mbv2", []), args, torch.device("cpu"), 3,
                                compile=True)
    assert not hasattr(session, "compile") and contender.compile is False  # the summary's "compile" reads this
    assert "precompile: this checkout's InferenceSession has no compile option; it runs eagerly" in \
        capsys.readouterr().out


@pytest.mark.parametrize("native", [True, False])
def test_the_peak_is_measured_in_the_dtype_the_matmuls_run_in(benchmark, monkeypatch, native):
    """bf16 autocast on a CPU with AMX runs its matmuls in bf16 (against a bf16 peak: 2.9 TFLOP/s on a 2-core
    Xeon, 0.4 in float32); without native bf16 they are emulated, and float32's peak is the one that means
    something."""
    import torch

    from mavos.inference import session

    monkeypatch.setattr(session, "cpu_computes_natively", lambda dtype: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert benchmark.peak_matmul_dtype(cpu, torch.bfloat16) == (torch.bfloat16 if native else torch.float32)
    assert benchmark.peak_matmul_dtype(cpu, torch.float32) == torch.float32
    assert benchmark.peak_matmul_dtype(cuda, torch.float16) == torch.float16  # a GPU's own, either way


def test_max_seconds_counts_the_warm_up(benchmark, tmp_path, capsys):
    """--max-seconds bounds the whole frame loop, warm-up (where compiling happens) included, so a GPU suite's run
    ends within its budget; a limit spent in the warm-up times nothing and says so instead of a summary."""
    with pytest.raises(SystemExit, match="no timed frames: all 0 frames run were warm-up"):
        benchmark.main(["--size", "65x65", "--frames", "50", "--warmup", "3", "--max-seconds", "0", "--threads", "2",
                        "--no-flops", "--out", str(tmp_path)])
    assert "--max-seconds 0: stopped after frame 0 of 53" in capsys.readouterr().out


def test_host_work_counts_compiled_calls_and_the_torch_ops_outside_them(benchmark):
    """The compiled profile's host count: two calls of a compiled function (whose own ops do not count) and
    three torch ops outside it, one of which calls other torch ops (counted once)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    double_plus_one = torch.compile(lambda x: torch.relu(x * 2 + 1), backend="eager", dynamic=False)
    x = torch.randn(8, 8)
    double_plus_one(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = double_plus_one(x)
        y = double_plus_one(y)
        z = torch.add(y, 1)
        z = torch.nn.functional.layer_norm(z, (8,))  # calls native_layer_norm (and more) inside
        z.sum()
    assert benchmark.host_work(prof) == (2, 3)


def test_compiler_settings_reach_inductor_and_the_depthwise_layers(benchmark, monkeypatch):
    """--inductor KEY=VALUE and --fused-depthwise: typed values, set where the compiler reads them, for this
    checkout's contender only (with --compare-with the other keeps the defaults, so one process times a setting
    against them); bad ones refused naming the setting."""
    import torch._inductor.config as inductor_config

    from mavos.model.layers import DepthwiseConv2d

    monkeypatch.setattr(DepthwiseConv2d, "fused_kernel_sizes", DepthwiseConv2d.fused_kernel_sizes)
    assert DepthwiseConv2d.fused_kernel_sizes == frozenset({3, 5})
    default_threshold = inductor_config.realize_reads_threshold
    assert default_threshold != 1
    args = benchmark.build_parser().parse_args(["--inductor", "realize_reads_threshold=1", "--inductor",
                                                "max_autotune=false", "--fused-depthwise", "3"])
    assert args.inductor == [("realize_reads_threshold", 1), ("max_autotune", False)]

    class Other:  # stands for another checkout's package: its own DepthwiseConv2d class
        label, package, inductor = "old", "tests.fake_checkout", {}
    mine = benchmark.Contender("new", "mavos")
    assert benchmark.apply_compiler_settings(args, [Other(), mine]) == [mine]
    assert DepthwiseConv2d.fused_kernel_sizes == frozenset({3})
    assert Other.inductor == {} and mine.inductor == {"realize_reads_threshold": 1, "max_autotune": False}

    seen = []

    def step(frame):  # a session's call: a compiled step compiles inside it, reading the config then
        seen.append((frame, inductor_config.realize_reads_threshold, inductor_config.max_autotune))

    with mine.compiler_settings():
        step(7)
    with benchmark.Contender("old", "mavos").compiler_settings():  # a contender without settings
        step(8)
    assert seen == [(7, 1, False), (8, default_threshold, inductor_config.max_autotune)]
    assert inductor_config.realize_reads_threshold == default_threshold  # nothing process-wide

    assert benchmark.build_parser().parse_args(["--fused-depthwise", "none"]).fused_depthwise == frozenset()
    with pytest.raises(SystemExit, match="no setting 'realize_read_threshold'"):
        benchmark.apply_compiler_settings(benchmark.build_parser().parse_args(
            ["--inductor", "realize_read_threshold=1"]), [mine])
    for bad in (["--inductor", "=1"], ["--fused-depthwise", "3x3"]):
        with pytest.raises(SystemExit):
            benchmark.build_parser().parse_args(bad)


def test_runs_with_other_compiler_settings_get_files_of_their_own(benchmark):
    """The output stem names the compiler settings (a probe runs the same model with and without them in one
    folder), in the characters a file name may safely hold; --tag still wins."""
    parse = benchmark.build_parser().parse_args
    base = ["--model", "mavos_mbv2", "--size", "480x854", "--precision", "bf16", "--compile", "--device", "cuda"]
    assert benchmark.tag_of(parse(base)) == "mavos_mbv2_default_480x854_bf16_compiled_cuda"
    assert (benchmark.tag_of(parse(base + ["--fused-depthwise", "5,3", "--inductor", "realize_reads_threshold=1"]))
            == "mavos_mbv2_default_480x854_bf16_compiled_cuda_dw-3-5_realize_reads_threshold-1")
    assert benchmark.tag_of(parse(base + ["--fused-depthwise", "none"])).endswith("_cuda_dw-none")
    assert benchmark.tag_of(parse(base + ["--inductor", "cuda.arch=sm 90/a"])).endswith("_cuda_cuda.arch-sm-90-a")
    assert benchmark.tag_of(parse(base + ["--fused-depthwise", "3", "--tag", "mine"])) == "mine"


def test_summary_line_says_when_flops_were_not_counted(benchmark):
    """--no-flops leaves the FLOP fields at zero; the printed line says they were not counted instead of
    reporting 0 GFLOP/s, and GPU-sized frame times keep two decimals."""
    summary = {"median_ms": 3.343, "p90_ms": 3.5, "write_median_ms": 4.84, "fps": 281.93, "first_tenth_ms": 3.507,
               "last_tenth_ms": 3.6, "peak_mb": 639.0, "gflop_regular": 0.0, "gflop_write": 0.0, "gflop_end": 0.0,
               "achieved_gflops": 0.0, "fraction_of_peak": 0.0, "peak_gflops": 770937.0, "flops_counted": False}
    line = benchmark.summary_line(summary)
    assert line.startswith("median 3.34 ms  p90 3.50  write 4.84  281.93 FPS  first/last 10% 3.51/3.60 ms")
    assert line.endswith("FLOPs not counted (--no-flops)") and "GFLOP/s" not in line
    counted = dict(summary, gflop_regular=122.0, gflop_write=232.0, gflop_end=122.0, achieved_gflops=35200.0,
                   fraction_of_peak=0.0457, peak_gflops=775000.0, flops_counted=True)
    assert benchmark.summary_line(counted).endswith("122.0/232.0 GFLOP  35200 GFLOP/s = 5% of 775000")
    # a compiled run whose compiler failed ran eagerly: its numbers must not pass for compiled ones
    failed = dict(summary, fell_back="RuntimeError: unsupported op")
    assert benchmark.summary_line(failed).endswith("NOT COMPILED: fell back to eager (RuntimeError: unsupported op)")


def test_attention_paths_agree_and_the_dense_window_mask_is_the_banded_window():
    """experiments/attention_paths.py on a 20x13 token map (more rows than one band): every formulation it times
    gives the written-out float32 attention, and its dense masked window (its own mask builder) equals the model's
    banded window."""
    spec = importlib.util.spec_from_file_location("attention_paths", ROOT / "experiments" / "attention_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tokens", "20", "13", "--reps", "1", "--threads", "2"])
    timed = {(r["case"], r["path"]): r for r in rows if r["ms"] is not None}
    assert {"written out", "sdpa (as dispatched)", "sdpa, values in 128-wide pieces",
            "written out, 256-query blocks"} <= {p for _, p in timed}
    assert ("short-term window 15x15", "banded (LocalGatedAttention)") in timed
    assert ("short-term window 15x15", "dense: sdpa + mask") in timed
    for r in timed.values():
        assert r["ms"] > 0 and r["max_diff"] < 1e-5, r


def test_random_checkpoint_reads_its_arguments_as_options_and_names_a_bad_model(tmp_path, monkeypatch, capsys):
    """``--help`` prints the usage instead of writing a checkpoint to a file called '--help'; an unknown model
    is refused by name, with nothing written."""
    spec = importlib.util.spec_from_file_location("random_checkpoint", ROOT / "experiments" / "random_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "OUT.ckpt [MODEL]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="model='mavos_tiny': unknown model"):
        module.main([str(tmp_path / "random.ckpt"), "mavos_tiny"])
    with pytest.raises(SystemExit, match="is a folder"):
        module.main([str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_memory_scaling_counts_from_the_first_write_after_a_warm_up(tmp_path, capsys):
    """memory_scaling.py on a tiny video: MAVOS's memory holds the same tokens from the first long-term write on,
    DeAOT's bank gains the reference's token count at every write; a video too short to have frames after the
    first write is refused by name."""
    spec = importlib.util.spec_from_file_location("memory_scaling", ROOT / "experiments" / "memory_scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        module.main(["--frames", "3", "--gap", "2", "--device", "cpu", "--out", str(tmp_path / "no.csv")])
    assert "--frames 3 --gap 2" in capsys.readouterr().err and not (tmp_path / "no.csv").exists()
    rows = module.main(["--frames", "7", "--height", "33", "--width", "33", "--gap", "2", "--warmup", "1",
                        "--device", "cpu", "--out", str(tmp_path / "scaling.csv")])
    with open(tmp_path / "scaling.csv") as f:
        assert len(list(csv.DictReader(f))) == 12  # frames 1-6 of each model
    tokens = {m: {r["frame"]: r["memory_tokens"] for r in rows if r["model"] == m} for m in ("mca", "bank")}
    reference = tokens["bank"][1]  # the bank before its first write: the reference frame alone
    assert tokens["mca"][1] == reference  # MCA holds one slot until its first write ...
    assert {tokens["mca"][f] for f in range(2, 7)} == {2 * reference}  # ... then two, for good
    assert [tokens["bank"][f] for f in range(1, 7)] == [reference * (1 + f // 2) for f in range(1, 7)]
    assert "first and last tenth of frames 2-6" in capsys.readouterr().out


def test_denormal_attention_measures_both_ways_and_counts_denormal_weights_by_their_bits():
    """denormal_attention.py on a tiny frame: both parts report a time computed and flushed; its share of denormal
    weights counts exactly the floats between 0 and 2^-126 (made from bits here, not from arithmetic that a
    flushing thread would zero), and scaled attention makes some where unscaled random weights make none."""
    import torch

    from tests.conftest import run_python

    spec = importlib.util.spec_from_file_location("denormal_attention", ROOT / "experiments" / "denormal_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bits = torch.tensor([0, 1, 1 << 22, (1 << 23) - 1, 1 << 23, 0x3F800000, -0x7FFFFFFF - 1, -0x7FFFFFFF],
                        dtype=torch.int32)  # 0, 2^-149, 2^-127, 2^-126 - 2^-149, 2^-126, 1, -0, -(2^-149)
    assert module.denormal_share(bits.view(torch.float32)) == pytest.approx(4 / 8)

    tiny = ["--size", "97x97", "--frames", "1", "--blocks", "1", "--gap", "2", "--repeats", "1"]
    shares = {}
    for sharpen in ("1", "100"):
        proc = run_python([str(ROOT / "experiments" / "denormal_attention.py"), *tiny, "--sharpen", sharpen], cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout
        assert "ms computed" in out and "ms flushed" in out and "median regular frame" in out
        assert "with session.set_denormal_as_zero" in out  # the onnxruntime part ran, both ways
        line = next(l for l in out.splitlines() if "denormal weights per attention" in l)
        shares[sharpen] = [float(p.rstrip("%,")) for p in line.split("one frame ")[1].split()]
        assert len(shares[sharpen]) == 6  # long-term and self-attention of the three layers
    assert max(shares["1"]) == 0.0 and max(shares["100"]) > 0.0
