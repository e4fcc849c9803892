"""The training engine: configuration, EMA, optimiser, NaN handling, I/O, sampling API, convergence."""
import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdistill.engine import (ConfigError, DistillConfig, Distiller, TrainingDiverged, preset_config,
                                run_distillation, valid_keys)
from fastdistill.engine.config import PRESETS
from fastdistill.engine.ema import EMA, ema_beta
from fastdistill.engine.updates import make_adam, sanitize_grads
from fastdistill.engine.updates import Updates

from tests._engine_helpers import TinyDenoiser, params_of, tiny_config, tiny_teacher


# ---------------------------------------------------------------------- configuration
def test_config_defaults_are_official_sid():
    c = DistillConfig()
    assert c.method.name == "sid" and c.method.alpha == 1.2 and c.method.sigma_init == 2.5
    assert (c.optim.beta1, c.optim.beta2, c.optim.lr) == (0.0, 0.999, 1e-5)
    assert (c.method.generator_loss_scale, c.method.fake_loss_scale) == (100.0, 1.0)
    assert c.ema.halflife_kimg == 500.0 and c.ema.rampup == 0.05
    for name in PRESETS:
        cfg = preset_config(name)
        if cfg.teacher.kind == "checkpoint":
            cfg.teacher.path = "x.pkl"
        cfg.validate()


def test_config_dict_file_and_overrides(tmp_path):
    c = DistillConfig.from_dict({"method": {"name": "sim", "c": 0.01}, "batch_size": 64})
    assert c.method.name == "sim" and c.method.c == 0.01 and c.batch_size == 64
    c = c.with_overrides(["optim.lr=3e-4", "compile=true", "method.divisor=none", "out_dir=/tmp/x"])
    assert c.optim.lr == 3e-4 and c.compile is True and c.method.divisor == "none" and c.out_dir == "/tmp/x"
    (tmp_path / "c.json").write_text(json.dumps({"preset": "toy", "steps": 7}))
    c = DistillConfig.from_file(tmp_path / "c.json")
    assert c.steps == 7 and c.teacher.kind == "analytic"
    (tmp_path / "c.toml").write_text('steps = 9\n[method]\nname = "dmd"\n[optim]\nlr = 2e-4\n')
    c = DistillConfig.from_file(tmp_path / "c.toml")
    assert (c.steps, c.method.name, c.optim.lr) == (9, "dmd", 2e-4)
    assert DistillConfig.from_dict(c.to_dict()) == c


def test_unknown_keys_list_valid_ones():
    with pytest.raises(ConfigError) as e:
        DistillConfig().with_overrides(["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "Did you mean optim.lr" in msg and "optim.grad_accum" in msg
    with pytest.raises(ConfigError, match="Valid keys") as e:
        DistillConfig.from_dict({"nope": 1})
    assert "method.alpha" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(ConfigError, match="key=value"):
        DistillConfig().with_overrides(["steps"])
    assert "teacher.path" in valid_keys()


@pytest.mark.parametrize("override,match", [
    ("batch_size=0", "batch_size"), ("optim.lr=-1", "optim.lr"), ("method.t_max=2000", "t_max"),
    ("optim.beta2=1.0", "beta"), ("precision=fp8", "precision"), ("method.name=foo", "method.name"),
    ("steps=1.5", "integer"), ("method.alpha=abc", "number"), ("optim.grad_accum=0", "grad_accum"),
    ("compile_scope=blocks", "compile_scope"), ("compile_mode=fast", "compile_mode"),
])
def test_out_of_range_values(override, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig().with_overrides([override]).validate()


# ---------------------------------------------------------------------- EMA / optimiser pieces
def test_ema_rampup_and_foreach_update():
    assert ema_beta(256, 0, 500, 0.05) == 0.0  # first step: EMA = weights
    hl = min(500e3, 0.05 * 1e6)
    assert ema_beta(256, 1e6, 500, 0.05) == pytest.approx(0.5 ** (256 / hl))
    assert ema_beta(256, 1e9, 500, 0.05) == pytest.approx(0.5 ** (256 / 500e3))
    a, b = tiny_teacher(0), tiny_teacher(1)
    ema = EMA(a, copy.deepcopy(b))
    ema.update(0.9)
    for pe, pa, pb in zip(ema.module.parameters(), a.parameters(), b.parameters()):
        torch.testing.assert_close(pe, pa.detach().lerp(pb.detach(), 0.9))


@pytest.mark.parametrize("impl", ["plain", "foreach", "fused", "auto"])
def test_adam_variants_agree(impl):
    torch.manual_seed(0)
    p0 = [torch.randn(5, 3), torch.randn(3)]
    g = [torch.randn(5, 3), torch.randn(3)]
    results = {}
    for name in ("plain", impl):
        ps = [t.clone().requires_grad_(True) for t in p0]
        opt = make_adam([{"params": ps, "lr": 1e-2}], (0.0, 0.999), 1e-8, name, torch.device("cpu"))
        for _ in range(3):
            for p, gg in zip(ps, g):
                p.grad = gg.clone()
            opt.step()
        results[name] = ps
    for a, b in zip(results["plain"], results[impl]):
        torch.testing.assert_close(a, b)


def test_sanitize_grads():
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0])
    sanitize_grads([p])
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 2.0]


# ---------------------------------------------------------------------- one engine iteration by hand
def _one_engine_step(tmp_path, **over):
    """One engine iteration at lr 1e-2, batch 8, and what a hand-written copy needs: the teacher,
    the generator and fake network before the step, and a generator replaying its noise."""
    teacher = tiny_teacher(0)
    d = Distiller(tiny_config(tmp_path, steps=1, batch_size=8, **{"optim.lr": 1e-2, **over}), teacher=teacher)
    g = torch.Generator().manual_seed(0)
    g.set_state(d.updates.gen.get_state())
    G0, F0 = copy.deepcopy(d.G), copy.deepcopy(d.fake)
    d.train_step()
    return d, teacher, G0, F0, g


def adam_first_step(params, grads, lr):  # betas (0, 0.999), eps 1e-8, step 1
    for p, gr in zip(params, grads):
        v_hat = (0.001 * gr * gr) / (1 - 0.999)
        p.data -= lr * gr / (v_hat.sqrt() + 1e-8)


def test_engine_iteration_matches_handwritten(tmp_path):
    """Fake Adam step, generator Adam step and EMA of one engine iteration, written out by hand."""
    from fastdistill.ops import reference as ref

    d, teacher, G0, F0, g = _one_engine_step(tmp_path, **{"ema.halflife_kimg": 0.01})
    m = d.method

    # fake step
    fn = m.draw_fake_noise(8, (2,), 0, g, "cpu")
    with torch.no_grad():
        x_g = G0(2.5 * fn.z, torch.full((8,), 2.5))
    pred = F0(x_g + fn.sigma[:, None] * fn.noise, fn.sigma)
    loss_f = ref.dsm(pred, x_g, fn.sigma, 0.5, 1.0).mean()
    adam_first_step(list(F0.parameters()), torch.autograd.grad(loss_f, list(F0.parameters())), 1e-2)
    # generator step (the fake network has been updated)
    gn = m.draw_generator_noise(8, (2,), 0, g, "cpu")
    x_g = G0(2.5 * gn.z, torch.full((8,), 2.5))
    x_t = x_g + gn.sigma[:, None] * gn.eps
    F0.requires_grad_(False)
    loss_g = 100 * ref.sid(x_g, teacher(x_t, gn.sigma), F0(x_t, gn.sigma), None, 1.2, 1.0).mean()
    adam_first_step(list(G0.parameters()), torch.autograd.grad(loss_g, list(G0.parameters())), 1e-2)

    for a, b in zip(d.fake.parameters(), F0.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(d.G.parameters(), G0.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(d.ema.module.parameters(), G0.parameters()):  # beta = 0 at the first step
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,over", [("dmd", {}), ("sid", {"method.reuse_samples": True})])
def test_sample_reuse_iteration_matches_handwritten(tmp_path, method, over):
    """With reuse_samples (DMD's default, DMD2's recipe) the generator step runs first and the
    fake step fits its samples x_g (detached, from the generator before its update)."""
    from fastdistill.ops import reference as ref

    d, teacher, G0, F0, g = _one_engine_step(tmp_path, **{"method.name": method, **over})
    assert d.method.reuses_samples
    m = d.method

    gn = m.draw_generator_noise(8, (2,), 0, g, "cpu")
    x_g = G0(2.5 * gn.z, torch.full((8,), 2.5))
    x_t = x_g + gn.sigma[:, None] * gn.eps
    F0.requires_grad_(False)
    if method == "dmd":
        with torch.no_grad():
            y_real, y_fake = teacher(x_t, gn.sigma), F0(x_t, gn.sigma)
        loss_g = 100 * ref.dmd(x_g, y_real, y_fake, None, 1.0).mean()
    else:
        loss_g = 100 * ref.sid(x_g, teacher(x_t, gn.sigma), F0(x_t, gn.sigma), None, 1.2, 1.0).mean()
    samples = x_g.detach()
    adam_first_step(list(G0.parameters()), torch.autograd.grad(loss_g, list(G0.parameters())), 1e-2)
    F0.requires_grad_(True)
    fn = m.draw_fake_noise(8, (2,), 0, g, "cpu")
    pred = F0(samples + fn.sigma[:, None] * fn.noise, fn.sigma)
    loss_f = ref.dsm(pred, samples, fn.sigma, 0.5, 1.0).mean()
    adam_first_step(list(F0.parameters()), torch.autograd.grad(loss_f, list(F0.parameters())), 1e-2)

    for a, b in zip(d.G.parameters(), G0.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(d.fake.parameters(), F0.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sample_reuse_is_off_for_sid_and_sim():
    assert not preset_config("digits").method.reuse_samples
    assert not preset_config("digits-sim").method.reuse_samples
    assert preset_config("digits-dmd").method.reuse_samples


# ---------------------------------------------------------------------- options
def _final(tmp_path, name, **over):
    d = Distiller(tiny_config(tmp_path / name, **over), teacher=tiny_teacher(0))
    d.run()
    return params_of(d.G)


def test_grad_accumulation_equals_full_batch(tmp_path):
    a = _final(tmp_path, "a", **{"distributed.rng": "global"})
    b = _final(tmp_path, "b", **{"distributed.rng": "global", "optim.grad_accum": 4})
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_same_result(tmp_path):
    a = _final(tmp_path, "a")
    b = _final(tmp_path, "b", activation_checkpointing=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_fake_steps_clipping_and_weight_decay(tmp_path, monkeypatch):
    """DMD2's recipe knobs: optim.fake_steps fake updates per iteration, gradient-norm clipping
    (at 1e-12 Adam's first step shrinks from about lr to nearly nothing), AdamW weight decay."""
    phases = []
    real = Updates.phase
    monkeypatch.setattr(Updates, "phase", lambda self, kind, *a, **k: phases.append(kind) or real(self, kind, *a, **k))
    d = Distiller(tiny_config(tmp_path / "a", steps=1, **{"optim.fake_steps": 3}), teacher=tiny_teacher(0))
    d.train_step()
    assert phases == ["fake", "generator", "fake", "fake"]
    monkeypatch.setattr(Updates, "phase", real)
    moved = {}
    for clip in (0.0, 1e-12):
        d = Distiller(tiny_config(tmp_path / f"c{clip}", steps=1, **{"optim.clip_grad": clip, "optim.lr": 1e-2}),
                      teacher=tiny_teacher(0))
        before = params_of(d.G)
        d.train_step()
        moved[clip] = max(float((a - b).abs().max()) for a, b in zip(params_of(d.G), before))
    assert moved[0.0] > 5e-3 and moved[1e-12] < 1e-4
    d = Distiller(tiny_config(tmp_path / "w", steps=1, **{"optim.weight_decay": 0.01}), teacher=tiny_teacher(0))
    assert isinstance(d.updates.opt_g, torch.optim.AdamW) and d.updates.opt_g.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("method", ["sim", "dmd"])
def test_other_methods_run(tmp_path, method):
    r = run_distillation(tiny_config(tmp_path, **{"method.name": method, "steps": 3}), teacher=tiny_teacher(0))
    assert r.step == 3 and r.nan_steps == 0


def test_bf16_autocast_runs(tmp_path, capsys):
    r = run_distillation(tiny_config(tmp_path, precision="bf16", steps=2), teacher=tiny_teacher(0))
    assert r.step == 2 and r.nan_steps == 0
    from fastdistill.engine.build import bf16_is_fast

    warned = "has no native bf16" in capsys.readouterr().out  # said where bf16 is emulated, only there
    assert warned == (not bf16_is_fast("cpu"))


def test_the_log_reports_mfu_without_changing_the_run(tmp_path, capsys):
    """log.mfu=true: rows carry tflop_s and mfu (the first step's FLOPs over the same-run dense
    peak); counting them changes the training only by rounding (under the FLOP counter's dispatch
    mode torch may pick other kernels for that step); refused with compile."""
    plain = Distiller(tiny_config(tmp_path / "plain", steps=4), teacher=tiny_teacher(0))
    plain.run()
    counted = Distiller(tiny_config(tmp_path / "mfu", steps=4, **{"log.mfu": True}), teacher=tiny_teacher(0))
    counted.run()
    assert "dense float32 peak" in capsys.readouterr().out
    for x, y in zip(params_of(plain.G), params_of(counted.G)):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-8)
    rows = [json.loads(line) for line in (tmp_path / "mfu" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["tflop_s"] > 0 and 0 < r["mfu"] < 2 for r in rows)
    assert "mfu" not in (tmp_path / "plain" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="log.mfu=true counts FLOPs in eager mode"):
        tiny_config(tmp_path / "c", compile=True, **{"log.mfu": True}).validate()


def test_compile_on_cpu_says_it_measured_slower(tmp_path, capsys):
    Distiller(tiny_config(tmp_path / "a", compile=True), teacher=tiny_teacher(0)).release()
    assert "compiled training ran slower than eager on CPU" in capsys.readouterr().out
    Distiller(tiny_config(tmp_path / "b"), teacher=tiny_teacher(0)).release()
    assert "slower" not in capsys.readouterr().out


def test_tf32_is_fp32_off_cuda(tmp_path, capsys):
    """precision=tf32 sets TF32 matmuls on CUDA only: on CPU the run is fp32's, bit for bit, said once."""
    a = _final(tmp_path, "a", steps=2)
    b = _final(tmp_path, "b", steps=2, precision="tf32")
    assert "TF32 is a CUDA format" in capsys.readouterr().out
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tf32_matmuls_only_while_a_cuda_run_trains(tmp_path):
    seen, before = [], torch.get_float32_matmul_precision()
    Distiller(tiny_config(tmp_path, steps=2, precision="tf32", device="cuda"), teacher=tiny_teacher(0),
              callback=lambda distiller, row: seen.append(torch.get_float32_matmul_precision())).run()
    assert seen == ["high", "high"] and torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_compile_matches_eager(tmp_path, device):
    """Three iterations with compile=true (Inductor, whole networks) train the generator as eager
    does, with the fused loss of the device in the step (about 12 s from a cold Inductor cache)."""
    over = {"steps": 3, "device": device, "method.backend": "auto"}
    eager = Distiller(tiny_config(tmp_path / "eager", **over), teacher=tiny_teacher(0))
    start = params_of(eager.G)
    eager.run()
    compiled = Distiller(tiny_config(tmp_path / "compiled", compile=True, **over), teacher=tiny_teacher(0))
    compiled.run()
    from fastdistill.ops.registry import resolve_backend

    assert resolve_backend("auto", device).name != "reference" and any(not torch.equal(x.cpu(), y) for x, y in zip(params_of(eager.G), start))
    for x, y in zip(params_of(eager.G), params_of(compiled.G)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_cuda_graphs_refused_on_cpu():
    with pytest.raises(ConfigError, match="reduce-overhead"):
        DistillConfig().with_overrides(["compile=true", "compile_mode=reduce-overhead", "device=cpu"]).validate()


def _conv_net(seed=0):
    from fastdistill.teachers.precond import EDMPrecond

    torch.manual_seed(seed)
    return EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=16, channel_mult=[1, 1],
                      num_blocks=1, attn_resolutions=[4], dropout=0.0)


def test_regional_compile_finds_the_repeated_blocks():
    from fastdistill.engine.build import compile_network, repeated_blocks
    from fastdistill.teachers.networks import UNetBlock

    net = _conv_net()
    blocks = repeated_blocks(net)
    assert blocks and len(blocks) == sum(isinstance(m, UNetBlock) for m in net.modules())
    assert compile_network(net, "regional", "default") is net  # blocks compiled in place
    assert all(b._compiled_call_impl is not None for b in blocks)
    whole = compile_network(TinyDenoiser(), "regional", "default")  # no repeated blocks: the whole network
    assert isinstance(whole, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["regional", "full"])
def test_compiled_scopes_match_eager(tmp_path, scope):
    """The same losses as eager, step by step (parameters are not compared: inductor sums in
    another order, and Adam's first steps amplify that rounding where a gradient is near zero)."""
    def losses(name, **over):
        d = Distiller(tiny_config(tmp_path / name, batch_size=4, **over), teacher=_conv_net())
        out = [d.train_step() for _ in range(3)]
        d.release()
        return out

    a = losses("eager")
    b = losses(scope, compile=True, compile_scope=scope)
    for k in ("loss_fake", "loss_gen"):
        assert a[0][k] == pytest.approx(b[0][k], rel=1e-5)
        assert [r[k] for r in a] == pytest.approx([r[k] for r in b], rel=1e-3)


# ---------------------------------------------------------------------- failure handling
class NaNTeacher(TinyDenoiser):
    def forward(self, x, sigma, class_labels=None):
        return super().forward(x, sigma) * float("nan")


def test_nan_steps_are_skipped_and_stop(tmp_path):
    teacher = tiny_teacher(0)
    nan_teacher = NaNTeacher()
    nan_teacher.load_state_dict(teacher.state_dict())
    d = Distiller(tiny_config(tmp_path, steps=50, max_nan_steps=4), teacher=nan_teacher, init_network=teacher)
    before = params_of(d.G)
    with pytest.raises(TrainingDiverged, match="4 consecutive non-finite steps"):
        d.run()
    assert d.nan_steps == 4 and d.step == 4
    for a, b in zip(before, d.G.parameters()):  # every generator update was skipped
        torch.testing.assert_close(a, b.detach())


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="not writable"):
        Distiller(tiny_config(blocker / "run"), teacher=tiny_teacher(0))
    # an existing run whose checkpoint directory stops accepting files: clear error, checkpoints intact
    run = tmp_path / "run"
    run_distillation(tiny_config(run, steps=2, ckpt_every=1), teacher=tiny_teacher(0))
    before = _digest(run / "checkpoints")
    (run / "checkpoints" / f".write-test-{os.getpid()}").mkdir()  # makes the write probe fail
    with pytest.raises(PermissionError, match="not writable"):
        run_distillation(tiny_config(run, steps=4, resume="auto"), teacher=tiny_teacher(0))
    (run / "checkpoints" / f".write-test-{os.getpid()}").rmdir()
    assert _digest(run / "checkpoints") == before


def test_checkpoints_kept_and_logs(tmp_path):
    r = run_distillation(tiny_config(tmp_path, steps=6, ckpt_every=1, keep_last=2), teacher=tiny_teacher(0))
    ck = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ck == ["step-00000005", "step-00000006"]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r_["step"] for r_ in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss_gen", "loss_fake", "img_per_s", "kimg", "nan_steps"} <= set(rows[0])
    state = json.loads((tmp_path / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["step"] == 6 and len(state["rng"]) == 1 and state["config"]["steps"] == 6
    assert r.samples is None and not (tmp_path / "samples.npz").exists()  # final_samples=auto: none without evaluation
    assert (Path(r.picture).is_file() if importlib.util.find_spec("matplotlib") else r.picture is None)  # a scatter plot


def test_final_samples_only_when_asked(tmp_path, capsys):
    """final_samples: auto writes eval_samples where the run evaluates (toy: exact teacher samples),
    none where it does not; a count writes that many, with its time in the summary, apart from training."""
    from fastdistill.engine.entry import format_summary

    r = run_distillation(tiny_config(tmp_path / "a", steps=2, final_samples=48), teacher=tiny_teacher(0))
    assert np.load(r.samples)["samples"].shape == (48, 2)
    assert "final outputs" in format_summary(r) or r.final_s < 0.5
    toy = preset_config("toy").with_overrides([f"out_dir={tmp_path / 'b'}", "steps=2", "teacher.fit_steps=5",
                                                 "eval_samples=64", "progress=false", "threads=1", "log.tensorboard=false"])
    assert np.load(run_distillation(toy).samples)["samples"].shape == (64, 2)
    assert run_distillation(toy.with_overrides([f"out_dir={tmp_path / 'c'}", "final_samples=0"])).samples is None


def test_sample_api(tmp_path):
    from fastdistill.student import sample, save_samples

    teacher = tiny_teacher(0)
    run_distillation(tiny_config(tmp_path, steps=2), teacher=teacher)
    a = sample(tmp_path, 100, seed=3, network=teacher)
    b = sample(tmp_path / "checkpoints" / "step-00000002", 100, seed=3, network=teacher)
    c = sample(tmp_path, 100, seed=4, network=teacher)
    assert a.shape == (100, 2) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="network"):
        sample(tmp_path, 10)
    pytest.importorskip("matplotlib")  # the picture (the optional plotting extra)
    out = save_samples(a, tmp_path / "s.png", tmp_path / "s.npz")
    assert Path(out["png"]).is_file() and Path(out["npz"]).is_file()


def test_image_shaped_teacher_and_grid(tmp_path):
    """The same loop on image-shaped data (an EDM network when available), with a PNG grid."""
    from fastdistill.teachers import precond
    torch.manual_seed(0)
    net = precond.EDMPrecond(img_resolution=8, img_channels=3, model_type="SongUNet",
                             model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                             dropout=0.1)
    r = run_distillation(tiny_config(tmp_path, steps=2, batch_size=4), teacher=net)
    assert r.step == 2 and r.nan_steps == 0
    from PIL import Image

    assert Image.open(r.picture).size[0] > 8
    # the architecture is recorded: one-step sampling needs only the checkpoint
    from fastdistill.student import sample
    from fastdistill.teachers.loading import load_teacher

    x = sample(tmp_path, 3, seed=1)
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()
    exported = load_teacher(tmp_path / "student.safetensors")
    with torch.no_grad():
        z = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(exported(2.5 * z, torch.full((3,), 2.5)), x)


# ---------------------------------------------------------------------- convergence on an analytic teacher
def _toy_run(tmp_path, preset, **over):
    threads = torch.get_num_threads()
    items = {"out_dir": str(tmp_path), "resume": "none", "progress": False, "ckpt_every": 0, "nvtx": False}
    items.update(over)
    try:
        r = run_distillation(preset, overrides=[f"{k}={v}" for k, v in items.items()])
    finally:
        torch.set_num_threads(threads)
    return r.quality


def test_toy_default_reaches_teacher_quality(tmp_path):
    """The default preset (8-Gaussian ring, exact teacher): the one-step student's sliced
    Wasserstein distance to the data falls far below the initial generator's and reaches that of
    the teacher's 35-evaluation Heun samples."""
    q = _toy_run(tmp_path, "toy", steps=1000, eval_every=0)
    assert q.metric == "sw"
    assert q.student < 0.2 * q.initial
    assert q.student <= 1.3 * q.teacher_heun35, q
    assert (tmp_path / "samples.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)


@pytest.mark.slow
@pytest.mark.parametrize("method,steps", [("sid", 4000), ("sim", 3000)])
def test_toy_sid_sim_converge(tmp_path, method, steps):
    q = _toy_run(tmp_path, "toy", **{"method.name": method, "steps": steps, "eval_every": 0})
    assert q.student < 0.2 * q.initial
    assert q.student <= 1.5 * q.teacher_heun35, q
