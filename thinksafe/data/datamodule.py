"""The LightningDataModule: builds (or reuses) the self-generated safety set, then tokenizes it.

``prepare_data`` runs the data stage — steered sampling, think-block check, guard — into ``output_dir`` (the
same code and artifact as ``thinksafe generate``); in a multi-process run ``setup`` runs it on every rank
instead, each rank on its share of the prompts, and merges the shards (:mod:`thinksafe.data.shards`).
``setup`` renders the kept rows through the model's chat template, reasoning kept in the target, loss on
response tokens only. With ``responses`` set, an existing response set (SafeChain, STAR-1, DirectRefusal, a
thinksafe set, or a list of them) is trained on instead.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import lazy_instance

from thinksafe.data.prompts import PromptSource, load_prompts
from thinksafe.data.ray_executor import RayOptions
from thinksafe.data.selfgen import SelfGenJob, SelfGenResult, kept_rows
from thinksafe.errors import UserError
from thinksafe.guards.base import Guard
from thinksafe.rows import LABELS, ChatEncoder, EncodedRow, TextRow, collate
from thinksafe.sampling.base import Sampler, SamplingConfig
from thinksafe.sampling.formats import FormatOption, ThinkRule, resolve_format
from thinksafe.sampling.steering import PAPER_TEMPLATE, check_template
from thinksafe.sampling.vllm_sampler import VLLMSampler


class SafetyDataModule(L.LightningDataModule):
    """Self-generated safety data for SFT.

    Args:
        prompts: prompt files/hub ids in the SafeChain schema (instruction, label), or entries
            ``{path, limit, seed, split}``.
        output_dir: where the self-generated set is written (manifest.json, sampled.jsonl, samples.jsonl,
            stats.json); a finished directory with the same settings is reused as is.
        chunk_size: prompts per appended chunk (the unit of resumption).
        sampler: how responses are sampled (VLLMSampler, or TransformersSampler on machines without vLLM).
        guard: who judges responses (LlamaGuard3, WildGuard, or the approximate OfflineJudge); required by the
            data stage, which never picks one itself.
        sampling: temperature, top_p, top_k, max_tokens, samples per prompt, seed.
        steering_template: the user turn sent for harmful prompts; ``{prompt}`` marks the prompt.
        reasoning_format: auto (from the chat template), qwen3, r1 or plain.
        chat_template_kwargs: extra chat-template arguments (None: ``enable_thinking=True`` for Qwen3).
        think_rule: which sampled reasoning responses may be kept: "strict" (one closed think block and an answer
            after it) or "authors" (the ThinkSafe authors' rule: the response contains ``</think>``).
        overwrite: start over in an output_dir made with different settings (its thinksafe files are removed).
        responses: train on this existing response set instead of generating one: a file, a hub id, a directory
            made by ``thinksafe generate`` (its kept rows), or a list of them.
        max_length: tokens per training row (prompt + response); longer responses are cut at the end, and
            rows left with no response token are dropped and counted.
        mask_prompt: loss on response tokens only.
        batch_size: rows per micro-batch (when ``max_tokens_per_batch`` is None).
        max_tokens_per_batch: fill micro-batches with rows of similar length up to this many tokens, padding
            counted, instead of ``batch_size`` rows (see :mod:`thinksafe.data.batching`); must be ≥ the longest
            row. None: fixed ``batch_size``.
        rows_per_step: with ``max_tokens_per_batch``: plan optimizer steps of about this many rows (all ranks
            together) by setting ``trainer.accumulate_grad_batches``, so the number of steps, and the learning-rate
            schedule, match a run of that batch size whatever the budget. None: keep the trainer's accumulation.
        tokens_per_step: the same target in tokens (padding not counted); exclusive with ``rows_per_step``.
        num_workers: DataLoader workers.
        seed: shuffling seed.
        in_distribution_rows: the in-distribution score of the training set — the mean per-token NLL of its
            responses under the initial model, per source and label (:mod:`thinksafe.metrics.in_distribution`) —
            is computed over at most this many rows per label (drawn with a fixed seed), reported by
            ``thinksafe generate`` and logged when ``fit`` starts. None: every row; 0: not computed.
        model_name_or_path: the model whose samples are collected (linked to ``model.name_or_path``).
        rounds: self-generation rounds (:mod:`thinksafe.rounds`). 1: one set, in ``output_dir``. K > 1: fit
            trains ``trainer.max_epochs / K`` epochs per round; round 1's set is ``output_dir/round_1/``, and after
            each round the prompts are sampled again with the weights just trained (written to
            ``output_dir/adapters/round_<k>/``), guarded, and written to ``output_dir/round_<k+1>/`` for the next.
        executor: where the data stage runs: "local" (this process, or every rank of a multi-process fit) or
            "ray" (a Ray actor pool of engines, one shard each, merged here: :mod:`thinksafe.data.ray_executor`;
            the optional ``ray`` extra).
        ray: with ``executor: ray``: the cluster's address and how many engines (see ``RayOptions``).
        heartbeat_timeout_s: in a multi-process data stage, a rank silent this long is taken as dead (None: 90 s).
    """

    def __init__(
        self,
        prompts: str | PromptSource | list[str | PromptSource] | None = None,
        output_dir: str = "runs/selfgen",
        chunk_size: int = 64,
        sampler: Sampler = lazy_instance(VLLMSampler),
        guard: Guard | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        steering_template: str = PAPER_TEMPLATE,
        reasoning_format: FormatOption = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
        think_rule: ThinkRule = "strict",
        overwrite: bool = False,
        responses: str | list[str] | None = None,
        max_length: int = 16384,
        mask_prompt: bool = True,
        batch_size: int = 1,
        max_tokens_per_batch: int | None = None,
        rows_per_step: int | None = None,
        tokens_per_step: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        in_distribution_rows: int | None = 256,
        model_name_or_path: str = "",
        rounds: int = 1,
        executor: Literal["local", "ray"] = "local",
        ray: RayOptions = RayOptions(),
        heartbeat_timeout_s: float | None = None,
    ):
        super().__init__()
        if rounds < 1:
            raise UserError(f"data.rounds must be ≥ 1, got {rounds}.")
        if rounds > 1 and responses is not None:
            raise UserError(
                "data.rounds samples the prompts again after each round; data.responses trains on a fixed set. "
                "Remove one of them."
            )
        if prompts is None and responses is None:
            raise UserError(
                "data.prompts is not set: give a prompt file/hub id, or data.responses to train on an existing set."
            )
        self.prompts = prompts
        self.output_dir = output_dir
        self.chunk_size = chunk_size
        self.sampler = sampler
        self.guard = guard
        self.sampling = sampling
        self.steering_template = check_template(steering_template)
        self.reasoning_format = reasoning_format
        self.chat_template_kwargs = chat_template_kwargs
        self.think_rule = think_rule
        self.overwrite = overwrite
        self.responses = responses
        self.max_length = max_length
        self.mask_prompt = mask_prompt
        self.batch_size = batch_size
        for name, value in (
            ("max_tokens_per_batch", max_tokens_per_batch),
            ("rows_per_step", rows_per_step),
            ("tokens_per_step", tokens_per_step),
        ):
            if value is not None and value < 1:
                raise UserError(f"data.{name} must be ≥ 1, got {value}.")
        if max_tokens_per_batch is None and (rows_per_step or tokens_per_step):
            raise UserError(
                "data.rows_per_step / data.tokens_per_step plan steps of token-budget micro-batches: set "
                "data.max_tokens_per_batch too (with a fixed batch_size, use trainer.accumulate_grad_batches)."
            )
        if rows_per_step is not None and tokens_per_step is not None:
            raise UserError("set data.rows_per_step or data.tokens_per_step, not both.")
        self.max_tokens_per_batch = max_tokens_per_batch
        self.rows_per_step = rows_per_step
        self.tokens_per_step = tokens_per_step
        self.num_workers = num_workers
        self.seed = seed
        if in_distribution_rows is not None and in_distribution_rows < 0:
            raise UserError(
                f"data.in_distribution_rows must be ≥ 0 (0: off) or null (every row), got {in_distribution_rows}."
            )
        self.in_distribution_rows = in_distribution_rows
        self.model_name_or_path = model_name_or_path
        self.rounds = rounds
        self.executor = executor
        self.ray = ray
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.round = 1  # the round being trained (checkpointed: see state_dict)
        self.round_started: dict[int, int] = {}  # round -> the global step it started at (rounds after the first)
        self._rows_round = 0
        self.rounds_driver = None  # the thinksafe.rounds.SelfGenRounds callback, which registers itself here
        self.recipe: dict[str, Any] | None = None  # set by the CLI, recorded in the manifest
        self.selfgen: SelfGenResult | None = None
        self.train_rows: list[EncodedRow] = []
        self.dropped: dict[str, int] = {}
        self.pad_id: int | None = None
        self._encoder: ChatEncoder | None = None

    def _model(self) -> str:
        if not self.model_name_or_path:
            raise UserError("model.name_or_path is not set: name the model (hub id, local directory or .gguf file).")
        return self.model_name_or_path

    def round_dir(self, k: int | None = None) -> str:
        """Where round ``k``'s set is (None: the round being trained): ``output_dir`` with one round, else
        ``output_dir/round_<k>``."""
        if self.rounds == 1:
            return self.output_dir
        return str(Path(self.output_dir) / f"round_{k or self.round}")

    def adapter_dir(self, k: int) -> str:
        """The weights at the end of round ``k``, which sample round ``k + 1``."""
        return str(Path(self.output_dir) / "adapters" / f"round_{k}")

    def selfgen_job(self, model: str | None = None) -> SelfGenJob:
        """The recipe's self-generated set as one :class:`SelfGenJob`, after validating the prompts and the guard.
        ``model``: what the sampler samples (None: ``model_name_or_path``; a later round passes what
        :func:`thinksafe.rounds.follow_training` returns)."""
        if self.guard is None:
            raise UserError(
                "data.guard is not set: the data stage keeps only responses a guard finds safe, and thinksafe "
                "does not pick one silently. Name it in the recipe, e.g. data.guard.class_path: "
                "thinksafe.guards.LlamaGuard3 (the paper's, needs a GPU) or thinksafe.guards.WildGuard; "
                "thinksafe.guards.OfflineJudge is an approximate phrase-list judge for tests and the offline "
                "testbed, and is used only when named."
            )
        return SelfGenJob(
            model=model or self._model(),
            prompts=load_prompts(self.prompts),  # validates every row before anything is written
            sampler=self.sampler,
            guard=self.guard,
            sampling=self.sampling,
            steering_template=self.steering_template,
            reasoning_format=self.reasoning_format,
            chat_template_kwargs=self.chat_template_kwargs,
            think_rule=self.think_rule,
            chunk_size=self.chunk_size,
            recipe=self.recipe,
        )

    def build_safety_set(self, model: str | None = None) -> SelfGenResult:
        """The data stage outside a multi-process fit: sample, check, guard and keep (or resume/reuse)
        :meth:`selfgen_job` into :meth:`round_dir` — in this process; with ``executor: ray``, on a Ray actor pool of
        engines, merged here; started as several processes by a launcher (``torchrun … thinksafe generate``), a
        shard on each, merged by rank 0."""
        from thinksafe.distributed import launched_world_size

        job = self.selfgen_job(model)
        world = launched_world_size()
        if world > 1:
            if self.executor != "local":
                raise UserError(
                    f"data.executor: {self.executor} runs its engines on the Ray cluster from one driver, but this "
                    f"`thinksafe generate` was started as {world} processes (torchrun): start it once."
                )
            from thinksafe.data.shards import build_launched

            self.selfgen = build_launched(
                job, self.round_dir(), overwrite=self.overwrite, heartbeat_timeout_s=self.heartbeat_timeout_s
            )
        elif self.executor == "ray":
            from thinksafe.data.ray_executor import build_on_ray

            self.selfgen = build_on_ray(job, self.round_dir(), options=self.ray, overwrite=self.overwrite)
        else:
            from thinksafe.data.shards import build_here  # resumes a multi-process run's shards too

            self.selfgen = build_here(job, self.round_dir(), overwrite=self.overwrite)
        return self.selfgen

    def prepare_data(self) -> None:
        # several processes: every rank builds its shard in setup instead (prepare_data runs on one rank per node)
        if self.responses is None and self._world() == 1:
            self.build_safety_set()

    def _world(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def build_safety_set_sharded(self, model: str | None = None) -> SelfGenResult:
        """The data stage on every rank of a multi-process fit (all ranks call it together): each samples and
        guards its share of the prompts with its own engine on its own device(s), then one merges the shards
        into :meth:`round_dir` (:mod:`thinksafe.data.shards`). ``model`` as in :meth:`build_safety_set`."""
        from thinksafe.data.shards import Ranks, build_sharded
        from thinksafe.distributed import destroy_process_group_at_exit

        destroy_process_group_at_exit()  # registered before anything can fail: the group must end cleanly
        root = self.trainer.strategy.root_device
        self.selfgen = build_sharded(
            self.selfgen_job(model),
            self.round_dir(),
            ranks=Ranks(),
            device_index=root.index if root.type == "cuda" else None,
            overwrite=self.overwrite,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
        )
        return self.selfgen

    def dataset_name(self) -> str:
        """What the model trains on: ``data.responses``, or ``self-generated (<output_dir>)``; the ``source`` of
        every training row."""
        if isinstance(self.responses, list):
            return " + ".join(self.responses)
        return self.responses or f"self-generated ({self.round_dir()})"

    def _text_rows(self) -> list[TextRow]:
        if self.responses is not None:
            from thinksafe.data.responses import load_responses

            return [TextRow(r.prompt, r.response, r.label, self.dataset_name()) for r in load_responses(self.responses)]
        return kept_rows(self.round_dir(), source=self.dataset_name())

    def encoder(self) -> ChatEncoder:
        """The encoder of the training rows: the model's tokenizer and chat template, ``reasoning_format``,
        ``max_length`` and ``mask_prompt``. Anything scored or trained like these rows goes through it."""
        if self._encoder is None:
            from thinksafe.model.loading import load_tokenizer

            tokenizer = load_tokenizer(self._model())
            fmt, kwargs = resolve_format(self._model(), self.reasoning_format, tokenizer, self.chat_template_kwargs)
            self._encoder = ChatEncoder(tokenizer, fmt, self.max_length, self.mask_prompt, kwargs)
        return self._encoder

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows and self._rows_round == self.round:
            return
        if self.responses is None and self.selfgen is None and self._world() > 1:
            self.build_safety_set_sharded()
        encoder = self.encoder()
        rows, dropped = encoder.encode_rows(self._text_rows())
        if not rows:
            where = (
                f"data.responses {self.responses}"
                if self.responses
                else f"the self-generated set in {self.round_dir()}"
            )
            raise UserError(
                f"no training rows: {where} "
                f"kept nothing usable (dropped for max_length={self.max_length}: {sum(dropped.values())}). "
                "See stats.json for why samples were rejected."
            )
        self.train_rows, self.dropped = rows, dropped
        self.pad_id = encoder.pad_id
        self._rows_round = self.round

    def training_rows(self) -> list[EncodedRow]:
        """The encoded training rows (after :meth:`setup`), each with :meth:`dataset_name` as its source."""
        if not self.train_rows:
            raise RuntimeError("SafetyDataModule.training_rows() before setup()")
        return self.train_rows

    def collate_fn(self):
        """Rows → batch, padded with the tokenizer's pad id (after :meth:`setup`)."""
        return partial(collate, pad_id=self.pad_id)

    def memory_probe(self) -> tuple[int, dict]:
        """(token budget of one micro-batch, the micro-batch of the training set that needs the most memory
        within it): ``max_tokens_per_batch``, else ``batch_size`` copies of the longest row."""
        from thinksafe.data.batching import worst_case_batch

        rows = self.training_rows()
        budget = self.max_tokens_per_batch or self.batch_size * max(len(r.input_ids) for r in rows)
        return budget, worst_case_batch(rows, budget, self.pad_id)

    def label_counts(self) -> dict[str, int]:
        return {lab: sum(r.label == lab for r in self.train_rows) for lab in LABELS}

    def train_dataloader(self):
        from thinksafe.data.batching import ResumableLoader, RowShuffleSampler

        trainer = self.trainer
        if self.rounds > 1 and trainer is not None and self.rounds_driver is None:
            raise UserError(
                f"data.rounds={self.rounds} needs the thinksafe.rounds.SelfGenRounds callback in the trainer's "
                "callbacks, which samples each round after the one before (`thinksafe fit` adds it)."
            )
        self.setup()  # a resumed run of several rounds learns its round from the checkpoint, after setup
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.max_tokens_per_batch is None:
            # the order is a function of (seed, epoch) and the loader's position is checkpointed, so a resumed run
            # continues with the very batch the interrupted one would have trained on next
            return self._resumable(
                ResumableLoader(
                    self.train_rows,
                    batch_size=self.batch_size,
                    sampler=RowShuffleSampler(len(self.train_rows), self.seed, rank, world),
                    num_workers=self.num_workers,
                    collate_fn=self.collate_fn(),
                )
            )

        from lightning.pytorch.utilities import rank_zero_info

        from thinksafe.data.batching import token_budget_loader

        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        # a reload (reload_dataloaders_every_n_epochs) finds the accumulation this method set before
        planned = self.rows_per_step is not None or self.tokens_per_step is not None
        if planned and accumulate not in (1, getattr(self, "_accumulation_set", 1)):
            raise UserError(
                f"trainer.accumulate_grad_batches={accumulate} conflicts with data.rows_per_step/tokens_per_step, "
                "which set it from the token budget; leave it at 1."
            )
        loader = token_budget_loader(
            self.train_rows,
            self.pad_id,
            self.max_tokens_per_batch,
            accumulate,
            self.rows_per_step,
            self.tokens_per_step,
            self.seed,
            rank,
            world,
            self.num_workers,
        )
        if planned and trainer is not None:
            # read after this call by Lightning's loop and by estimated_stepping_batches (the LR schedule)
            trainer.accumulate_grad_batches = self._accumulation_set = loader.sampler.micro_batches_per_step
        rank_zero_info(f"thinksafe: {loader.sampler.summary().describe()}")
        return self._resumable(loader)

    # ------------------------------------------------------------------------------------------------ resume
    # The loader's position (epoch, batches served, plan fingerprint) travels in the checkpoint through these two
    # hooks. Lightning also checkpoints a loader that has a state_dict, but restores it only when it builds the
    # loader after reading the checkpoint; the LR schedule (estimated_stepping_batches) makes it build the loader
    # before, its restore is then skipped, and the run would start the epoch over (Lightning 2.6).
    def state_dict(self) -> dict[str, Any]:
        loader = getattr(self, "_loader", None)
        state: dict[str, Any] = {"loader": loader.state_dict()} if loader is not None else {}
        if self.rounds > 1:
            state.update(
                round=self.round,
                round_started=dict(self.round_started),
                loader_round=getattr(self, "_loader_round", None),
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.rounds > 1 and "round" in state_dict:
            self.round = int(state_dict["round"])
            self.round_started = {int(k): int(v) for k, v in state_dict.get("round_started", {}).items()}
            if state_dict.get("loader_round") != self.round:  # saved as a round ended: the next starts afresh
                state_dict = {k: v for k, v in state_dict.items() if k != "loader"}
        self._loader_state = state_dict.get("loader")
        if getattr(self, "_loader", None) is not None and self._loader_state is not None:
            self._loader.load_state_dict(self._loader_state)  # built already (strategies that restore late)

    def _resumable(self, loader):
        self._loader = loader
        self._loader_round = self.round
        state, self._loader_state = getattr(self, "_loader_state", None), None
        if state is not None:
            loader.load_state_dict(state)
        return loader
