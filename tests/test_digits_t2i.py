"""The shipped digits text-to-image teacher: its folder, the command that trains it, guidance,
the report's plumbing, and a short distillation whose one-step student learns to follow prompts."""
import hashlib
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is an optional dependency")
pytest.importorskip("transformers", reason="transformers is an optional dependency")

from fastdistill.cli import main  # noqa: E402
from fastdistill.data.digit_prompts import (HELDOUT_TEMPLATES, TRAIN_TEMPLATES,  # noqa: E402
                                            digit_prompts, prompt_words)
from fastdistill.engine import Distiller, preset_config  # noqa: E402
from fastdistill.metrics.digits_classifier import load_digits_classifier  # noqa: E402
from fastdistill.reports import digits_t2i as report  # noqa: E402
from fastdistill.sampling import draw, edm_sampler  # noqa: E402
from fastdistill.student import Student, load_student  # noqa: E402
from fastdistill.teachers import GuidedDenoiser, load_teacher  # noqa: E402
from fastdistill.teachers import digits_t2i  # noqa: E402


#: the shipped folder, or an export of a student of it, in plain diffusers: no fastdistill imported,
#: no argument beyond the prompt (the pipeline's own defaults) but a short run and numpy output
PLAIN_DIFFUSERS = """
import sys
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
images = pipe("the digit seven", num_inference_steps=2, output_type="np").images
assert images.shape == (1, 16, 16, 3), images.shape
assert "fastdistill" not in sys.modules
print("ran")
"""


def run_in_plain_diffusers(folder):
    proc = subprocess.run([sys.executable, "-c", PLAIN_DIFFUSERS, str(folder)], capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ran"), proc.stderr[-2000:]


def _folder_digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def test_templates_hold_out_whole_sentences():
    train = {t for t, _ in TRAIN_TEMPLATES}
    held = {t for t, _ in HELDOUT_TEMPLATES}
    assert not train & held
    pairs = digit_prompts()
    assert len(pairs) == 10 * len(TRAIN_TEMPLATES)
    assert [d for _, d in pairs].count(7) == len(TRAIN_TEMPLATES)
    assert ("a handwritten seven", 7) in pairs and ("the digit 7", 7) in pairs
    with pytest.raises(ValueError, match="form"):
        digit_prompts([("the {digit}", "roman")])


def test_shipped_folder_is_a_small_stable_diffusion_pipeline():
    folder = digits_t2i.digits_t2i_path()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 5 * 2**20
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    for split, templates in (("train", TRAIN_TEMPLATES), ("heldout", HELDOUT_TEMPLATES)):
        lines = (folder / digits_t2i.PROMPT_FILES[split]).read_text().splitlines()
        assert lines == [p for p, _ in digit_prompts(templates)]
    record = json.loads((folder / digits_t2i.TRAINING_RECORD).read_text())
    assert record["command"] == "fastdistill train-teacher --preset digits-t2i"
    assert record["train_seconds"] <= 30 * 60  # the budget on 2 cores
    t = load_teacher("digits-t2i")
    assert (t.family, t.resolution, t.img_channels, t.img_resolution) == ("Stable Diffusion 1.x/2.x", 16, 4, 8)
    assert all(p.dtype == torch.float32 for p in t.parameters())  # UNet and VAE stored float16, loaded float32
    run_in_plain_diffusers(folder)  # the text encoder is stored float32: transformers keeps a stored dtype
    tok = t.tokenizers[0]
    for word in prompt_words():
        assert len(tok.tokenize(word)) == 1, word


def _adherence(teacher, guidance, n=100, steps=8):
    prompts, digits = report.eval_prompts(n, "train")
    (z,), _ = draw(n, (4, 8, 8), 3)
    with torch.no_grad():
        x = edm_sampler(GuidedDenoiser(teacher, guidance), z, teacher.encode_prompt(prompts), num_steps=steps)
        read = load_digits_classifier()(teacher.decode(x.float())).argmax(1)
    return float((read == digits).float().mean())


def test_shipped_teacher_follows_prompts_and_guidance_helps():
    t = load_teacher("digits-t2i")
    plain, guided = _adherence(t, 1.0), _adherence(t, 3.0)
    assert guided >= 0.9, (plain, guided)
    assert guided > plain


def test_training_command_writes_a_loadable_pipeline_and_fails_without_loss(tmp_path, monkeypatch):
    cfg = digits_t2i.DigitsT2IConfig(vae_steps=2, vae_batch_size=8, unet_steps=2, unet_batch_size=8)
    out = digits_t2i.train_digits_t2i(tmp_path / "t2i", cfg, progress=False)
    t = load_teacher(str(out))
    assert t.encode_prompt(["a handwritten seven"]).embeds.shape == (1, 16, 64)
    record = json.loads((out / digits_t2i.TRAINING_RECORD).read_text())
    assert record["config"]["unet_steps"] == 2 and record["unet_parameters"] > 10**6
    assert json.loads((out / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    before = _folder_digest(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_t2i, "_train_unet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        digits_t2i.train_digits_t2i(out, cfg, progress=False)
    assert _folder_digest(out) == before  # the old folder is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["t2i"]  # and no temporary folder is left


def test_cli_refuses_what_does_not_apply(tmp_path, capsys):
    assert main(["train-teacher", "--preset", "digits-t2i", "--out", str(tmp_path / "x"), "--arch", "digits-small"]) == 2
    assert "--arch do not apply" in capsys.readouterr().err
    assert main(["distill", "--preset", "digits-t2i", "--methods", "sid,gan"]) == 2
    assert "a subset of sid,sim,dmd" in capsys.readouterr().err
    assert main(["distill", "--preset", "digits-t2i-sweep", "--methods", "sid"]) == 2
    assert main(["distill", "--preset", "digits-t2i", "method.guidance_teacher=2"]) == 2
    assert "sets method.guidance_teacher itself" in capsys.readouterr().err


def test_report_plumbing_and_teacher_cache(tmp_path):
    kw = dict(n=64, draws=2, guidances=(2.0,), teacher_steps=(4,), students=(("sid", 2.0),), workers=1,
              overrides=["steps=3"], log=None)
    rep = report.digits_t2i_report(tmp_path, None, **kw)
    sid = rep.student_rows[0]
    assert sid["train_steps"] == 3 and len(sid["adherence_draws"]) == 2 and "adherence" in sid["heldout"]
    assert sid["source"] == sid["run_dir"] and (sid["nfe"], sid["passes"]) == (1, 1)  # the evaluation core's rows
    assert all(r["source"] == "digits-t2i" and r["passes"] == 2 * r["nfe"] for r in rep.teacher_rows)
    assert {(r["steps"], r["split"]) for r in rep.teacher_rows} == {(18, "train"), (4, "train"), (18, "heldout")}
    assert any(v.startswith("SiD-LSG student at guidance 2") for v in rep.verdicts)
    for name in ("samples", "tradeoff", "prompts_sid-g2"):
        assert (tmp_path / f"{name}.png").is_file()
    text = (tmp_path / "report.txt").read_text()
    assert "teacher Heun 18 steps, guidance 2" in text and "SiD-LSG student, guidance 2, 1 step" in text
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = report.teacher_rows(tmp_path / "cache", "digits-t2i", kw["students"], kw["guidances"], kw["teacher_steps"],
                                kw["n"], kw["draws"], kw["workers"], lambda *a: None, 30.0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached
    assert again == rep.teacher_rows  # read back from the cache, not sampled again


@pytest.mark.parametrize("method", ["sid"])
def test_short_distillation_learns_to_follow_prompts(tmp_path, method):
    """SiD-LSG on the shipped teacher for a short run: the one-step student's adherence rises
    from the initial generator's (the teacher read at one noise level) to near the teacher's."""
    cfg = preset_config(report.METHOD_PRESETS[method]).with_overrides(
        [f"out_dir={tmp_path}", "steps=150", "batch_size=16", "threads=2", "log_every=50"])
    d = Distiller(cfg)
    n = 200
    prompts, digits = report.eval_prompts(n, "train")
    classifier = load_digits_classifier()

    def adherence(student):
        x = student.decode(student.sample(n, seed=5, cond=student.conditioning(prompts, n)))
        return float((classifier(x).argmax(1) == digits).float().mean())

    # the generator starts as the teacher read at sigma_init (its text encoders are released in d)
    initial = adherence(Student(load_teacher("digits-t2i"), d.student_info()))
    d.run()
    final = adherence(load_student(tmp_path))
    assert final >= 0.8 and final > initial + 0.1, (initial, final)
    assert main(["export", str(tmp_path), str(tmp_path / "exported")]) == 0
    run_in_plain_diffusers(tmp_path / "exported")
