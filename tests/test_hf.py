"""genossm.hf: genossm models exported to Hugging Face Transformers and read back.

Transformers' own MambaForCausalLM / Mamba2ForCausalLM must load an export on CPU in float32
with logits equal to genossm's (to 1e-4 of the largest logit), its AutoTokenizer must encode DNA
to genossm's codes, and read_hf must give back the same model; what Transformers cannot compute
the same way is a one-line InputError. Everything runs offline from local files.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"          # nothing may download: every path here is local
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from genossm import alphabet
from genossm.convert.checkpoint import parse_vocab
from genossm.errors import InputError
from genossm.hf import export, read_hf
from genossm.model import GenoSSM, ModelConfig, ModelDir, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=16, n_layer=2, d_conv=4)
MODELS = {
    # Mamba-1 without conv bias, an explicit dt rank
    "mamba1": dict(mixer="mamba1", d_state=4, dt_rank=3, conv_bias=False),
    # Mamba-2, 4 heads of 8, scan chunks of 16 (the test length 37 is ragged)
    "mamba2": dict(mixer="mamba2", d_state=8, headdim=8, chunk_size=16),
}
HF_CLASSES = {"mamba1": transformers.MambaForCausalLM, "mamba2": transformers.Mamba2ForCausalLM}
LENGTH = 37
SCAN = "ref"    # genossm's reference scan, the definition its other backends are tested against


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved away from its initial value (D = 1, norm weights = 1, ... would let
    a wrong mapping pass)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def make_model(tmp_path, name, seed=0, **changes) -> tuple[GenoSSM, object]:
    torch.manual_seed(seed)
    model = perturbed(GenoSSM(ModelConfig(**SMALL, **{**MODELS[name], **changes})), seed)
    directory = tmp_path / f"genossm_{name}"
    ModelDir(directory).save_model(model)
    return load_model(directory), directory


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    model, directory = make_model(tmp, request.param)
    hf_dir = export(directory, tmp / "hf")
    return request.param, model, directory, hf_dir


def tokens(seed=1, batch=2, length=LENGTH) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, alphabet.NUM_BASE_CODES, (batch, length), generator=gen)


def assert_close(mine, ref, what):
    scale = ref.abs().max().item()
    diff = (mine - ref).abs().max().item()
    assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} > 1e-4 x {scale:.3g}"


def one_line_error(call, *parts) -> str:
    with pytest.raises(InputError) as failure:
        call()
    message = str(failure.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message
    return message


def test_transformers_loads_the_export_with_the_same_logits(exported):
    name, model, _, hf_dir = exported
    cls = HF_CLASSES[model.config.mixer]
    hf = cls.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(hf.config).__name__ == cls.__name__.replace("ForCausalLM", "Config")
    x = tokens()
    with torch.no_grad():
        mine = model(x, backend=SCAN)
        theirs = hf(x).logits
        uncached = hf(x, use_cache=False).logits
    assert theirs.shape == mine.shape == (2, LENGTH, alphabet.VOCAB_SIZE)
    assert_close(theirs, mine, f"{name} logits")
    assert_close(uncached, mine, f"{name} logits without cache")
    assert hf.lm_head.weight.data_ptr() == hf.backbone.embeddings.weight.data_ptr()  # tied
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["vocab_size"] == 6 and config["tie_word_embeddings"] is True
    assert "genossm" in (hf_dir / "README.md").read_text()


def test_transformers_generates_from_the_export(exported):
    """Token by token through Transformers' cache (its recurrent path) the logits stay
    genossm's."""
    name, model, _, hf_dir = exported
    hf = HF_CLASSES[model.config.mixer].from_pretrained(hf_dir, dtype=torch.float32).eval()
    x = tokens(seed=2, batch=1, length=12)
    with torch.no_grad():
        out = hf.generate(x, max_new_tokens=4, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)
        full = model(out.sequences, backend=SCAN)
    steps = torch.stack(out.logits, dim=1)                  # logits that chose tokens 12..15
    assert_close(steps, full[:, 11:15], f"{name} generation logits")


def test_tokenizer_encodes_like_genossm(exported):
    _, _, _, hf_dir = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = "ACGTNacgtnGATTACA" + alphabet.IUPAC_AMBIGUOUS + alphabet.IUPAC_AMBIGUOUS.lower()
    ids = tokenizer(text)["input_ids"]
    assert ids == alphabet.encode(text).tolist()
    assert ids[:10] == [0, 1, 2, 3, 4] * 2 and set(ids[17:]) == {alphabet.N}
    assert tokenizer("MASK")["input_ids"] == alphabet.encode("MASK").tolist()   # letters
    assert tokenizer.mask_token_id == alphabet.MASK
    assert tokenizer.decode([0, 1, 2, 3, 4]) == "ACGTN"
    batch = tokenizer(["ACG", "ttttR"], return_tensors=None)["input_ids"]
    assert batch == [[0, 1, 2], [3, 3, 3, 3, 4]]
    # a character genossm refuses is refused here too
    with pytest.raises(ValueError):
        alphabet.encode("AC-GT")
    with pytest.raises(Exception, match="UNK"):
        tokenizer("AC-GT")


def test_round_trip_gives_the_same_model(exported):
    name, model, _, hf_dir = exported
    checkpoint = read_hf(hf_dir)
    config, state = checkpoint.config, checkpoint.state
    assert config == model.config
    assert checkpoint.source["format"] == "hf"
    assert checkpoint.source["vocab_rows"] == {"A": 0, "C": 1, "G": 2, "T": 3, "N": 4, "MASK": 5}
    back = GenoSSM(config)
    back.load_state_dict(state, strict=True)
    back.eval()
    mine = model.state_dict()
    assert mine.keys() == back.state_dict().keys()
    for key, value in back.state_dict().items():
        assert torch.equal(value, mine[key]), key
    x = tokens(seed=3)
    with torch.no_grad():
        assert torch.equal(back(x, backend=SCAN), model(x, backend=SCAN)), name


def test_genossm_convert_reads_the_export_back(exported, tmp_path):
    """`genossm convert HF_DIR` (format told by config.json) gives back the model."""
    from genossm.convert import convert

    name, model, _, hf_dir = exported
    back = load_model(convert(hf_dir, tmp_path / "back"))
    assert back.config == model.config
    assert json.loads((tmp_path / "back" / "config.json").read_text())["source"]["format"] == "hf"
    x = tokens(seed=7)
    with torch.no_grad():
        assert torch.equal(back(x, backend=SCAN), model(x, backend=SCAN)), name


def test_pytorch_model_bin(exported, tmp_path):
    _, model, _, hf_dir = exported
    src = tmp_path / "bin"
    src.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (src / name).write_bytes((hf_dir / name).read_bytes())
    torch.save(load_file(str(hf_dir / "model.safetensors")), src / "pytorch_model.bin")
    checkpoint = read_hf(src)
    assert checkpoint.config == model.config
    state = checkpoint.state
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_a_transformers_made_directory_with_a_vocab_map(kind, tmp_path):
    """A checkpoint Transformers wrote itself (random, 12 token ids, no tokenizer): read with an
    explicit map, its A C G T N logit columns are genossm's."""
    torch.manual_seed(4)
    common = dict(vocab_size=12, hidden_size=16, num_hidden_layers=2, conv_kernel=4, expand=2,
                  tie_word_embeddings=True, layer_norm_epsilon=1e-5)
    if kind == "mamba1":
        config = transformers.MambaConfig(state_size=4, time_step_rank=2, **common)
        hf = transformers.MambaForCausalLM(config)
    else:   # with a dt limit that the perturbed dt_bias reaches
        config = transformers.Mamba2Config(state_size=8, num_heads=4, head_dim=8, n_groups=1,
                                           chunk_size=16, time_step_limit=(0.05, 0.5), **common)
        hf = transformers.Mamba2ForCausalLM(config)
    perturbed(hf, 5)
    hf.save_pretrained(tmp_path / "hf")

    one_line_error(lambda: read_hf(tmp_path / "hf"), "--vocab", "tokenizer.json")
    vocab = parse_vocab("A=7, C=3, G=9, T=1, N=0")
    checkpoint = read_hf(tmp_path / "hf", vocab)
    assert checkpoint.config.mixer == kind
    if kind == "mamba2":
        limit = checkpoint.config.dt_limit_min, checkpoint.config.dt_limit_max
        assert limit == (0.05, 0.5)
    state = checkpoint.state
    model = GenoSSM(checkpoint.config)
    model.load_state_dict(state, strict=True)
    model.eval()
    codes = tokens(seed=6)
    source_ids = torch.tensor([7, 3, 9, 1, 0])
    with torch.no_grad():
        mine = model(codes, backend=SCAN)[..., :5]
        theirs = hf(source_ids[codes]).logits[..., source_ids]
    assert_close(mine, theirs, f"{kind} A C G T N logits")
    # MASK: the first id the map leaves unused (2), or the one given
    assert torch.equal(state["embedding.weight"][alphabet.MASK],
                       hf.backbone.embeddings.weight[2].detach())
    state = read_hf(tmp_path / "hf", {**vocab, "MASK": 11}).state
    assert torch.equal(state["embedding.weight"][alphabet.MASK],
                       hf.backbone.embeddings.weight[11].detach())


@pytest.mark.parametrize("vocab, words", [
    ({"A": 0, "C": 1, "G": 2, "T": 3}, "no id for N"),
    ({"A": 0, "C": 1, "G": 2, "T": 3, "N": 3}, "different ids"),
    ({"A": 0, "C": 1, "G": 2, "T": 3, "N": 6}, "id 6 for N is outside its 6 rows"),
    ({"A": 0, "C": 1, "G": 2, "T": 3, "N": 4, "U": 5}, "'U' is not one of"),
    ({"A": 0, "C": 1, "G": 2, "T": 3, "N": "4"}, "not a map of genossm symbols"),
])
def test_bad_vocab_map(exported, vocab, words):
    _, _, _, hf_dir = exported
    one_line_error(lambda: read_hf(hf_dir, vocab), hf_dir, "--vocab", words)


@pytest.mark.parametrize("edit, field, words", [
    (lambda c: c.update(n_groups=2), "n_groups", "2 groups are not supported"),
    (lambda c: c.update(use_bias=True), "use_bias", "not supported"),
    (lambda c: c.update(model_type="llama"), "model_type", "a llama model"),
    (lambda c: c.pop("model_type"), "model_type", "genossm convert"),
    (lambda c: c.update(time_step_limit=[0.0]), "time_step_limit", "not a (min, max) pair"),
    (lambda c: c.update(num_heads=3), "num_heads", "is not expand * hidden_size"),
])
def test_unsupported_config(tmp_path, edit, field, words):
    _, directory = make_model(tmp_path, "mamba2")
    hf_dir = export(directory, tmp_path / "hf")
    cfg = json.loads((hf_dir / "config.json").read_text())
    edit(cfg)
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    one_line_error(lambda: read_hf(hf_dir), hf_dir / "config.json", field, words)


def test_misshaped_missing_and_untied(tmp_path):
    _, directory = make_model(tmp_path, "mamba2")
    hf_dir = export(directory, tmp_path / "hf")
    path = hf_dir / "model.safetensors"
    weights = load_file(str(path))
    key = "backbone.layers.1.mixer.D"
    save_file({**weights, key: torch.ones(5)}, str(path))
    one_line_error(lambda: read_hf(hf_dir), path, key, "(5,)", "(4,)")
    save_file({k: v for k, v in weights.items() if k != key}, str(path))
    one_line_error(lambda: read_hf(hf_dir), path, key, "missing")
    head = weights["backbone.embeddings.weight"] + 1
    save_file({**weights, "lm_head.weight": head}, str(path))
    one_line_error(lambda: read_hf(hf_dir), path, "lm_head.weight", "untied")
    save_file({**weights, "lm_head.weight": weights["backbone.embeddings.weight"].clone()},
              str(path))
    assert read_hf(hf_dir).config.n_layer == 2      # a stored tied head is fine


@pytest.mark.parametrize("changes, field, words", [
    (dict(bidirectional=True, objective="mlm"), "model.bidirectional", "not a causal model"),
    (dict(rc_equivariant=True, objective="mlm"), "model.rc_equivariant", "not a causal model"),
    (dict(objective="mlm"), "model.objective", "objective 'mlm'"),
    (dict(n_groups=2), "model.n_groups", "2 groups"),
    (dict(dt_limit_min=0.05), "model.dt_limit_min", "cached step"),
    (dict(dt_limit_max=0.5), "model.dt_limit_max", "cached step"),
])
def test_export_refuses_what_transformers_cannot_compute(tmp_path, changes, field, words):
    _, directory = make_model(tmp_path, "mamba2", **changes)
    output = tmp_path / "hf"
    one_line_error(lambda: export(directory, output), directory, field, words)
    assert not output.exists()


def test_export_refuses_a_mamba1_dt_limit(tmp_path):
    _, directory = make_model(tmp_path, "mamba1", dt_limit_max=0.5)
    one_line_error(lambda: export(directory, tmp_path / "hf"), directory, "model.dt_limit_max",
                   "clamps no dt")


def test_output_policy(exported, tmp_path):
    _, _, directory, hf_dir = exported
    before = (hf_dir / "model.safetensors").read_bytes()
    one_line_error(lambda: export(directory, hf_dir), hf_dir, "output exists")
    assert export(directory, hf_dir, force=True) == hf_dir
    assert (hf_dir / "model.safetensors").read_bytes() == before
    one_line_error(lambda: export(directory, directory / "hf"), "is an input of this run")
    one_line_error(lambda: export(directory, directory), "is an input of this run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(lambda: export(directory, other, force=True), "not a Hugging Face directory")
    assert (other / "notes.txt").read_text() == "mine"


def test_the_export_command(exported, tmp_path, capsys):
    """`genossm export MODEL_DIR -o HF_DIR` writes what the function writes; a non-causal
    model is a one-line error."""
    from genossm.cli import main

    _, _, directory, hf_dir = exported
    out = tmp_path / "hf"
    assert main(["export", str(directory), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == (hf_dir / "model.safetensors").read_bytes()
    _, bidirectional = make_model(tmp_path, "mamba1", objective="mlm", bidirectional=True)
    assert main(["export", str(bidirectional), "-o", str(tmp_path / "bi")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genossm: error: ") and err.count("\n") == 1, err
