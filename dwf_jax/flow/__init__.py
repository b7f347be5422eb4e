"""Flow matching on flattened network weights: model, loss, training, sampling."""

from dwf_jax.flow.finetune import (
    Finetuning,
    batchnorm_columns,
    column_decoder,
    detached_steps,
    finetune_flow,
    full_weight_decoder,
    integrate_detached,
    mean_cross_entropy,
    pca_decoder,
)
from dwf_jax.flow.loss import TIME_DISTRIBUTIONS, flow_matching_loss, sample_time
from dwf_jax.flow.model import VelocityField
from dwf_jax.flow.sample import ODE_METHODS, integrate, num_function_evals, ode_step, sample_ensemble, time_field
from dwf_jax.flow.source import SOURCES, Source, draw, kaiming_bounds
from dwf_jax.flow.train import (
    FlowState,
    create_flow_state,
    learning_rate_schedule,
    make_optimizer,
    make_train_chunk,
    make_validation_loss,
)

__all__ = [
    "ODE_METHODS",
    "TIME_DISTRIBUTIONS",
    "VelocityField",
    "SOURCES",
    "Source",
    "draw",
    "kaiming_bounds",
    "flow_matching_loss",
    "sample_time",
    "integrate",
    "num_function_evals",
    "ode_step",
    "sample_ensemble",
    "time_field",
    "Finetuning",
    "batchnorm_columns",
    "column_decoder",
    "detached_steps",
    "finetune_flow",
    "full_weight_decoder",
    "integrate_detached",
    "mean_cross_entropy",
    "pca_decoder",
    "FlowState",
    "create_flow_state",
    "learning_rate_schedule",
    "make_optimizer",
    "make_train_chunk",
    "make_validation_loss",
]
