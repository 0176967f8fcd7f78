"""Model parallelism: split one model over many ranks (picotron style: one file per kind,
communication beside the math).

- tensor parallel (Megatron-LM, Shoeybi et al. 2019): ``tensor.py`` (ColumnParallelLinear,
  RowParallelLinear, the Megatron MLP) and ``tp_comm.py`` (the operators f and g);
- pipeline parallel (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021):
  ``pipeline.py`` (stages, the runtime) and ``pp_schedule.py`` (schedules as pure data,
  bubble fraction, Gantt charts), ``pp_comm.py`` (send/recv between neighbour stages);
  interleaved 1F1B and ZB-H1 (Megatron-LM 2021; Qi et al. 2024): ``pp_modern.py`` (the
  schedules, their player and formulas) and ``pp_train.py`` (training with any schedule);
- 3D parallel training of the GPT (dp x pp x tp, ZeRO-0..3 on dp): ``three_d.py`` and
  ``three_d_zero.py`` (a pipeline stage with ZeRO-2/3 over dp);
- expert parallelism (GShard, Lepikhin et al. 2020): ``expert.py`` (an MoE layer whose experts
  are split over an ep group, tokens dispatched and combined with all_to_all);
- the device mesh (named dims, a sub-communicator per dim and combination): ``mesh.py``;
- long context (Ulysses, Jacobs et al. 2023; ring attention, Liu et al. 2023, with the zig-zag
  split): ``context.py`` (forward and backward, both exact) and ``context_report.py`` (who
  computes which block, step times with and without overlap, timelines);
- ZeRO (Rajbhandari et al. 2020): ``zero.py`` (memory per device for stages 0-3, a
  ZeRO-1 optimizer: reduce-scatter, update my shard, all-gather) and ``fsdp.py`` (ZeRO-2
  and ZeRO-3 / FSDP of any nn model, unit by unit, with prefetch and measured memory;
  mixed precision, FSDP2's MixedPrecisionPolicy: ``fsdp_precision.py``).

Every class takes ``comm`` explicitly and runs on any engine; tests run them on ``sim``.
"""
from .pipeline import PipelineParallel, PipelineStage, partition_layers  # noqa: F401
from .pp_comm import PipeComm  # noqa: F401
from .pp_schedule import (SCHEDULES, Slot, bubble_fraction, gpipe_schedule, makespan,  # noqa: F401
                          measured_bubble, one_f_one_b_schedule, peak_in_flight, play, plot_schedule,
                          stage_ops, timeline)
from .pp_modern import (VSlot, interleaved_makespan, interleaved_schedule, peak_activations,  # noqa: F401
                        run_on_sim, zb_h1_makespan, zb_h1_schedule)
from .pp_train import ScheduledPipeline, schedule_ops  # noqa: F401
from .tensor import (ColumnParallelLinear, NaiveParallelMLP, ParallelMLP, RowParallelLinear,  # noqa: F401
                     split_like)
from .tp_comm import (CopyToTP, GatherFromTP, ReduceFromTP, count_calls, count_nbytes,  # noqa: F401
                      ring_all_reduce_wire_bytes, shard_range, shard_sizes)
from .sequence import (GatherFromSP, ReduceScatterToSP, ScatterToSP, check_sequence_parallel, count_kinds,  # noqa: F401
                       seq_range)
from .tp_attention import (ColumnParallelDense, RowParallelDense, TPBlock, TPFeedForward, TPSelfAttention,  # noqa: F401
                           shard_block_state)
from .three_d import (LAYOUTS, global_losses, loss_curves, mesh_comms, mesh_coords, plot_loss_curves,  # noqa: F401
                      shard_gpt_state, sim_mfu, stage_params, tp_gpt, train_3d, train_single)
from .three_d_zero import ShardedStage, dp_wire_bytes  # noqa: F401
from .mesh import MEGATRON_ORDER, Mesh, describe_mesh, mesh_layout  # noqa: F401
from .zero import (ADAM_K, ZeroOptimizer, ring_bytes_per_rank, wire_bytes, zero_bytes_per_param,  # noqa: F401
                   zero_memory, zero_memory_by_kind)
from .context import (RingCache, check_context_parallel, cp_chunks, cp_positions, cp_shard, cp_unshard,  # noqa: F401
                      ring_attention, ring_attention_backward, ring_blocks, ring_bytes, ring_forward_time,
                      ulysses_attention, ulysses_attention_backward, ulysses_bytes)
from .context_report import (plot_ring_timeline, plot_ring_work, ring_run, ring_times, ring_work,  # noqa: F401
                             work_per_rank)
from .expert import ExpertParallelMoE, check_expert_split, ep_traffic, ep_wire_bytes, load_imbalance  # noqa: F401
from .fsdp import FSDP, MemoryLedger, assemble, make_units  # noqa: F401
from .fsdp_precision import MixedPrecisionPolicy, mp_memory_by_kind  # noqa: F401
from .fsdp_report import plot_fsdp_timeline, prefetch_step_times, run_step, zero_stages  # noqa: F401

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "ParallelMLP", "NaiveParallelMLP", "split_like",
           "CopyToTP", "ReduceFromTP", "GatherFromTP", "count_calls", "count_nbytes",
           "ring_all_reduce_wire_bytes", "shard_range", "shard_sizes",
           "PipelineParallel", "PipelineStage", "partition_layers", "PipeComm",
           "SCHEDULES", "Slot", "gpipe_schedule", "one_f_one_b_schedule", "stage_ops", "timeline", "play",
           "makespan", "bubble_fraction", "measured_bubble", "peak_in_flight", "plot_schedule",
           "VSlot", "interleaved_schedule", "zb_h1_schedule", "interleaved_makespan", "zb_h1_makespan",
           "peak_activations", "run_on_sim", "ScheduledPipeline", "schedule_ops",
           "GatherFromSP", "ReduceScatterToSP", "ScatterToSP", "check_sequence_parallel", "count_kinds", "seq_range",
           "ColumnParallelDense", "RowParallelDense", "TPSelfAttention", "TPFeedForward", "TPBlock",
           "shard_block_state", "mesh_coords", "mesh_comms", "tp_gpt", "shard_gpt_state", "train_3d",
           "train_single", "global_losses", "stage_params", "ShardedStage", "dp_wire_bytes", "LAYOUTS", "loss_curves", "plot_loss_curves", "sim_mfu",
           "Mesh", "MEGATRON_ORDER", "mesh_layout", "describe_mesh",
           "ADAM_K", "ZeroOptimizer", "zero_bytes_per_param", "zero_memory", "zero_memory_by_kind",
           "ring_bytes_per_rank", "wire_bytes", "FSDP", "MemoryLedger", "assemble", "make_units",
           "run_step", "zero_stages", "prefetch_step_times", "plot_fsdp_timeline",
           "check_context_parallel", "cp_chunks", "cp_positions", "cp_shard", "cp_unshard", "ulysses_attention",
           "ulysses_attention_backward", "ulysses_bytes", "ring_blocks", "RingCache", "ring_attention",
           "ring_attention_backward", "ring_bytes", "ring_forward_time", "ring_work", "work_per_rank",
           "plot_ring_work", "ring_run", "ring_times", "plot_ring_timeline",
           "ExpertParallelMoE", "check_expert_split", "ep_traffic", "ep_wire_bytes", "load_imbalance",
           "MixedPrecisionPolicy", "mp_memory_by_kind"]
