"""The ``toy-flow`` backend: the toy world on a rectified-flow model (issue 13).

The same renderer, text encoder and 32 px UNet as ``toy``, pretrained with the flow objective
(``recipes/toy/pretrain-flow.yaml``: x_t = (1 - sigma) x0 + sigma noise, target noise - x0, timestep
sigma * 1000), sampled with the flow-matching Euler scheduler. It fine-tunes with the noise process of the
real flow families (``FlowNoiseProcess``, as ``sd3`` and ``flux``), so the headline question can be asked of
a flow-matching model on a CPU. Training sigmas are uniform by default (``weighting_scheme: none``), as the
``toy`` backend's DDPM timesteps are; ``logit_normal`` (SD3's default) is a backend option.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mapo_bench.backends.flow import FlowNoiseProcess
from mapo_bench.backends.toy import ToyBackend


class ToyFlowBackend(FlowNoiseProcess, ToyBackend):
    name: ClassVar[str] = "toy-flow"
    default_model: ClassVar[str] = "toy-flow"
    objective: ClassVar[str] = "flow"
    default_weighting_scheme: ClassVar[str] = "none"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configure()

    @staticmethod
    def training_scheduler(config: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    @classmethod
    def load(cls, model: str | None = None, **options: Any) -> ToyFlowBackend:
        flow = cls.split_flow_options(options)
        backend = super().load(model, **options)
        backend.configure(**flow)
        return backend

    def record(self) -> dict[str, Any]:
        return {**super().record(), **self.flow_record()}
