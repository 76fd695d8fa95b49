"""The model side of setup: precision, where the base model comes from, loading it (QLoRA in 4-bit on each
rank's GPU, or without memory on the meta device for FSDP), the method (LoRA/QLoRA adapters through peft, layer
freezing for full fine-tuning), the trainable weights, and the optimizer with transformers' schedule.
"""
from pathlib import Path

import torch

from kubetune.api import FineTuneJob
from kubetune.api.spec import Lora
from kubetune.trainer import classify, parallel
from kubetune.trainer.dist import Dist
from kubetune.trainer.errors import BadInput
from kubetune.trainer.storage import Store
from kubetune.trainer.unfreeze import gradual, transformer_blocks


def precision(job: FineTuneJob, cuda: bool) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32)."""
    chosen = job.spec.hyperparameters.precision
    if chosen == "auto":
        chosen = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if chosen == "fp16" and not cuda:
        raise BadInput("hyperparameters.precision fp16 needs a GPU; use bf16 or fp32 on CPUs")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[chosen]


def model_source(job: FineTuneJob, store: Store, dist: Dist) -> tuple[str, dict]:
    """Where from_pretrained reads the base model (a local directory, or a hub id) and its extra arguments; each
    node's local rank 0 downloads an s3:// model into the node's cache while the others wait."""
    spec = job.spec
    source = spec.base_model.uri
    if source.startswith("hf://"):
        return source.removeprefix("hf://"), {"revision": spec.base_model.revision}
    path = dist.local_first(lambda: store.fetch(source, "baseModel.uri"))
    if not (Path(path) / "config.json").is_file():  # say so, rather than transformers' tokenizer puzzles
        found = sorted(p.name for p in Path(path).iterdir())[:10] if Path(path).is_dir() else [Path(path).name]
        raise BadInput(f"baseModel.uri {source}: no config.json there (found: {', '.join(found) or 'nothing'}); "
                       "expected a model directory as save_pretrained writes it")
    return str(path), {}


def load_tokenizer(job: FineTuneJob, path: str, kw: dict):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=job.spec.base_model.trust_remote_code, **kw)
    except (OSError, ValueError) as exc:
        raise BadInput(f"baseModel.uri {job.spec.base_model.uri}: cannot load a tokenizer from it: {exc}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(job: FineTuneJob, path: str, kw: dict, device: torch.device, amp: torch.dtype | None,
               pad_id: int, labels: classify.Labels | None = None, dtype=None, place: bool = True):
    """The pretrained model; with `labels`, it gets a new classification (or regression) head. QLoRA loads each
    rank's 4-bit copy straight onto that rank's GPU."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = job.spec
    kw = dict(kw)
    qlora = spec.method.type == "qlora"
    if qlora:
        if device.type != "cuda":
            raise BadInput("method.type qlora needs a CUDA GPU (4-bit kernels); use lora on CPUs")
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401 (an image without it is bad input, not a crash to retry)
        except ImportError as exc:
            raise BadInput(f"method.type qlora: bitsandbytes is not installed in the trainer image ({exc}); "
                           "install kubetune[qlora] or use lora") from exc
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=amp or torch.bfloat16)
        kw["device_map"] = {"": device.index}
    # Frozen base weights may live in the compute dtype; trained full weights stay fp32 (master copy) unless
    # hyperparameters.weightPrecision asks for pure bf16.
    if dtype is None:
        dtype = amp if (amp is not None and spec.method.type != "full") else full_weights_dtype(job)
    try:
        auto, head = (AutoModelForSequenceClassification, labels.model_kwargs()) if labels else (AutoModelForCausalLM, {})
        model = auto.from_pretrained(path, dtype=dtype, trust_remote_code=spec.base_model.trust_remote_code,
                                     **head, **kw)
    except (OSError, ValueError) as exc:
        raise BadInput(f"baseModel.uri {spec.base_model.uri}: cannot load a {spec.task} model from it: {exc}") \
            from exc
    if labels and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_id  # decoder heads pool the last token that is not padding
    if place and not qlora:
        model.to(device)
    return model


def full_weights_dtype(job: FineTuneJob) -> torch.dtype:
    """The dtype full fine-tuning trains its weights (and AdamW states) in: fp32 masters, or pure bf16."""
    return torch.bfloat16 if job.spec.hyperparameters.weight_precision == "bf16" else torch.float32


def meta_model(job: FineTuneJob, path: str, kw: dict, pad_id: int, labels: classify.Labels | None = None,
               method: bool = True):
    """The same model (and method) as load_model + apply_method, without memory: parameters on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    trust = job.spec.base_model.trust_remote_code
    auto, head = (AutoModelForSequenceClassification, labels.model_kwargs()) if labels else (AutoModelForCausalLM, {})
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust, **head, **kw)
    if labels and config.pad_token_id is None:
        config.pad_token_id = pad_id
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust, dtype=full_weights_dtype(job))
        return apply_method(job, model) if method else model


def apply_method(job: FineTuneJob, model):
    """LoRA/QLoRA adapters via peft, or layer freezing for full fine-tuning."""
    method = job.spec.method
    if method.type in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        lora = method.lora or Lora()
        if method.type == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=job.spec.hyperparameters.gradient_checkpointing)
        targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        seq_cls = job.spec.task == "sequence-classification"
        # A new head starts random: it trains in full and is saved with the adapter.
        keep = (lora.modules_to_save or []) + (classify.head_modules(model) if seq_cls else [])
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            bias=lora.bias, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                            modules_to_save=keep or None, task_type="SEQ_CLS" if seq_cls else "CAUSAL_LM")
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise BadInput(f"method.lora.targetModules {lora.target_modules}: {exc} The model's linear layers are: "
                           f"{', '.join(linear)} (or use all-linear)") from exc
        # peft keeps adapters in fp32 but a trained copy of a module (a new head, modulesToSave) in the base's
        # half dtype: GradScaler cannot unscale fp16 gradients, and bf16 weights and AdamW states lose small updates.
        for p in model.parameters():
            if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        return model
    freeze = method.freeze
    if freeze is not None:
        if freeze.embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        if freeze.trainable_top_layers is not None and not gradual(freeze):  # else GradualUnfreezing does it
            blocks = transformer_blocks(model)
            for block in blocks[: max(len(blocks) - freeze.trainable_top_layers, 0)]:
                block.requires_grad_(False)
    return model


def checkpointing(model, job: FineTuneJob) -> None:
    """hyperparameters.gradientCheckpointing and its choices: every block (or every Nth:
    gradientCheckpointingEveryLayers) recomputes its activations in the backward, their saved inputs on the host
    with gradientCheckpointingOffload (transformers' activation_checkpointing_enable, torch's save_on_cpu)."""
    hp = job.spec.hyperparameters
    if not hp.gradient_checkpointing:
        return
    every, offload = hp.gradient_checkpointing_every_layers or 1, bool(hp.gradient_checkpointing_offload)
    if every == 1 and not offload:
        model.gradient_checkpointing_enable()  # the on/off behaviour, as before the choices existed
        return
    base = parallel.unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # under peft: the transformers model
    base.activation_checkpointing_enable(every_n_layers=every, offload=offload)


def trainable_state(model, names: set[str] | None = None) -> dict:
    """The weights training changes; `names` also counts blocks that gradual unfreezing has yet to thaw. Sharded
    (FSDP) weights stay shards where they are; replicated ones are copied to the host. Keys are the model's own,
    never DDP's `module.` ones, so a checkpoint resumes on any world size."""
    return {k: (v.detach().clone() if parallel.is_dtensor(v) else v.detach().to("cpu", copy=True))
            for k, v in parallel.unwrap(model).named_parameters()
            if (k in names if names is not None else v.requires_grad)}


def load_trainable(model, state: dict) -> None:
    params = dict(parallel.unwrap(model).named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k.removeprefix("module.")].copy_(v)  # checkpoints written under DDP before names were unwrapped


def optimizer_for(job: FineTuneJob, model, total_steps: int, fused: bool = True):
    """AdamW (no decay on biases and norms) and transformers' schedule: linear warmup, then cosine, linear or
    constant. `fused`: one fused kernel for all parameters (CUDA or CPU), the multi-tensor (foreach) path for
    FSDP's DTensors; else torch's loop over the parameters."""
    from transformers import get_scheduler

    hp = job.spec.hyperparameters
    lr = hp.learning_rate or (2e-5 if job.spec.method.type == "full" else 2e-4)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]  # biases and norms
    # Fused wherever the parameters are plain tensors: one process and DDP take the same kernel and end on the same
    # weights. FSDP's DTensors take foreach (fused AdamW does not take them on a CPU); a one-process FSDP run
    # compared with a two-process one is DTensors on both sides. On the 152k-vocabulary CPU shape fused is 5x
    # cheaper a step than foreach (tests/trainer/test_optimizer.py).
    plain = not any(parallel.is_dtensor(p) for p in decay + no_decay)
    kernel = ({"fused": True} if plain else {"foreach": True}) if fused else {"foreach": False}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, **kernel)
    name = "constant_with_warmup" if hp.scheduler == "constant" else hp.scheduler
    return opt, get_scheduler(name, opt, num_warmup_steps=int(hp.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
