"""The LightningCLI behind ``thinksafe fit`` and ``thinksafe generate``, and reading a recipe with it.

A recipe is a LightningCLI config: ``model`` (any LightningModule named by ``class_path``; a recipe that names
none gives :class:`ThinkSafeModule`'s arguments), ``data`` (:class:`SafetyDataModule`), ``trainer`` and
``seed_everything``.
The optimizer is the module's own ``configure_optimizers`` (``model.lr`` …): the weights exist only after
``configure_model``, so LightningCLI's ``--optimizer`` is not offered.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, Namespace, set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from thinksafe.errors import UserError, parse_args

# the options of thinksafe's dataclasses (data.sampling.*, data.ray.*, …) are documented by a docstring under each
# field: --help shows them only when jsonargparse reads those
set_parsing_settings(docstring_parse_attribute_docstrings=True)

RECIPE_HELP = (
    "a recipe (YAML file of the settings below; recipes/*.yaml); --section.key=value flags after it override it"
)
DEFAULT_MODULE = "thinksafe.model.module.ThinkSafeModule"
# `thinksafe` gives LightningCLI the arguments itself and leaves sys.argv as launched, so that Lightning's DDP
# launcher can start the other ranks with the same command line; LightningCLI warns when it sees both
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def strict_parser_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Parser settings of every thinksafe parser: errors are raised (the CLI explains them), no abbreviations."""
    return {"exit_on_error": False, "allow_abbrev": False, **kwargs}


class ThinkSafeCLI(LightningCLI):
    def __init__(self, args: list[str], run: bool = True, prog: str = "thinksafe", **kwargs: Any) -> None:
        self.prog = prog
        from lightning.pytorch import LightningModule

        from thinksafe.data.datamodule import SafetyDataModule
        from thinksafe.run_log import RecipeLogger

        super().__init__(
            LightningModule,  # any LightningModule by class_path; ThinkSafeModule when the recipe names none
            SafetyDataModule,
            subclass_mode_model=True,  # a recipe may name another LightningModule with class_path
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            save_config_callback=RecipeLogger,  # config.yaml + the recipe as TensorBoard hparams (E9)
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # only fit: the module has no validation/test/predict steps
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        import lightning.pytorch as pl

        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        kwargs.setdefault("prog", self.prog)
        parser = self.parser_class(**strict_parser_kwargs(kwargs))
        parser.add_argument("--recipe", "-c", "--config", action=ActionConfigFile, help=RECIPE_HELP)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        self.config = parse_args(parser, args, prog=self.prog if not args or args[0] != "fit" else f"{self.prog} fit")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # recipes give ThinkSafeModule's arguments without class_path
        parser.set_defaults({"model": {"class_path": DEFAULT_MODULE}})
        # the data side samples from the model being trained
        parser.link_arguments("model.init_args.name_or_path", "data.model_name_or_path")
        _paths_are_never_contents(parser)

    def before_fit(self) -> None:
        from thinksafe.metrics.in_distribution import InDistributionLogger

        ckpt = self.config.fit.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc") and "://" not in ckpt and not ckpt.startswith("registry"):
            if not Path(ckpt).is_file():
                raise UserError(f"--ckpt_path: {ckpt} is not a file; give a checkpoint (.ckpt) that exists, or 'last'.")
        if ckpt == "last":
            from thinksafe.model.checkpoints import require_last_checkpoint

            require_last_checkpoint(self.trainer)
        online = getattr(self.model, "online_data", None)
        if online is not None:  # a method that samples while it trains (GRPO) takes the prompts, no data stage
            self.datamodule = online(self.datamodule)
        self.datamodule.recipe = plain(self.config.fit)
        # the training set's in-distribution score under the initial model, logged when fit starts
        rows = self.datamodule.in_distribution_rows
        if rows != 0 and not any(isinstance(c, InDistributionLogger) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(InDistributionLogger(limit=rows))
        if getattr(self.datamodule, "rounds", 1) > 1:  # data.rounds: sample again after each round's training
            from thinksafe.rounds import SelfGenRounds

            SelfGenRounds.install(self.trainer)
        from thinksafe.cost import CostLog

        if not any(isinstance(c, CostLog) for c in self.trainer.callbacks):
            # first, so that its setup (the end of the data stage) runs before BeforeAfterEval evaluates in its own
            self.trainer.callbacks.insert(0, CostLog())  # cost.json in every run directory


def _paths_are_never_contents(parser) -> None:
    """``--data.prompts=FILE`` is a file name, never the file's content. jsonargparse reads a value naming an
    existing file as a sub-config when the option's type holds a dataclass (PromptSource): a CSV or an empty
    .jsonl then became the text or null, and the error no longer named the file. Switched off for these options
    (jsonargparse 4.53 has no public switch per option)."""
    for action in parser._actions:
        if action.dest in ("data.prompts", "data.responses") and hasattr(action, "_enable_path"):
            action._enable_path = False


class _RecipeReader(ThinkSafeCLI):
    def instantiate_classes(self) -> None:
        """Parse and validate only: nothing is built."""


def read_recipe(path: str) -> Namespace:
    """The recipe at ``path`` parsed and validated as ``thinksafe generate`` would, without building anything."""
    return _RecipeReader(["--recipe", str(path)], run=False, seed_everything_default=False).config


def plain(cfg: Any) -> Any:
    """A JSON-able copy of a jsonargparse Namespace (for the manifest)."""
    if isinstance(cfg, Namespace):
        return {k: plain(v) for k, v in vars(cfg).items()}
    if isinstance(cfg, dict):
        return {k: plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain(v) for v in cfg]
    if isinstance(cfg, (str, int, float, bool)) or cfg is None:
        return cfg
    return str(cfg)
