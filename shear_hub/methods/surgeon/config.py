"""Settings of the LLM Surgeon (van der Ouderaa et al., ICLR 2024); ``--option KEY=VALUE`` sets any field."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ShearHubError

MODES = ("structured", "unstructured", "2:4")
CURVATURES = ("kfac", "layerwise")
FISHERS = ("empirical", "sampled")
SOLVERS = ("sequential", "joint")


@dataclass
class SurgeonConfig:
    mode: str = field(default="structured", metadata={"help": (
        "structured: remove the graph's groups (physically smaller model); unstructured / 2:4: masks + OBS "
        "updates, the saved file stays dense (same shapes, zeros inside)")})
    # 1 by default: on SmolLM2 at 20% four shots gave the same perplexity (31.65 vs 31.55, 16 windows) for 4x the
    # time; the paper uses up to 40 shots on the way to 50%
    shots: int = field(default=1, metadata={"help": (
        "the target grows linearly over this many shots; curvature is recomputed from the updated model each "
        "shot (raise it for high sparsities)")})
    curvature: str = field(default="kfac", metadata={"help": (
        "kfac: F ~ G (x) A from forward+backward passes of the whole model; layerwise: G = I, A from cached "
        "inputs, one decoder layer on the device at a time (SparseGPT-style, for models larger than the GPU)")})
    fisher: str = field(default="empirical", metadata={"help": (
        "empirical: loss on the true next tokens; sampled: labels drawn from the model's own softmax "
        "(true Fisher)")})
    damp_g: float = field(default=0.01, metadata={"help": "relative damping of G: M + damp * mean(diag M) * I"})
    damp_a: float = field(default=0.01, metadata={"help": "relative damping of A: M + damp * mean(diag M) * I"})
    normalize: bool = field(default=True, metadata={"help": (
        "rank groups by cost per parameter removed (knapsack-greedy); false: raw cost (the reference sorts raw "
        "costs)")})
    # auto: on Gemma-3-270M per-layer at 10% the global allocation emptied late MLPs (3.69x dense on the domain
    # protocol; 2.33x with 0.25, 2.18x with 0.5, chosen on pydocs_eval); SmolLM2 at 20% never reaches 0.25
    min_keep: float | None = field(default=None, metadata={"help": (
        "per-layer layout: every layer keeps at least this fraction of its MLP channels, KV groups and query heads "
        "(a floor under the global allocation); null = 0.5 for architectures with a norm after each attention / "
        "MLP output (Gemma 2/3), 0 (none beyond one head) otherwise")})
    joint_cost: bool = field(default=True, metadata={"help": (
        "a group owning several rows/columns of a matrix (heads) costs the exact joint OBS cost of removing "
        "them together; false: the sum of single-row/column costs as in the paper")})
    coupling: str = field(default="consumer", metadata={"help": (
        "consumer: a head / MLP channel / block is scored and compensated at its consumer (o_proj, down_proj "
        "columns) only; sum: the sum over every matrix it touches (the paper's per-matrix rows + columns, "
        "double-counting)")})
    update: bool = field(default=True, metadata={"help": (
        "rows of G / columns of A touched together in one shot are solved jointly (correlated OBS update); "
        "false: structures are only zeroed (no weight update), an ablation")})
    lora_rank: int = field(default=0, metadata={"help": (
        "rank of an optional first-order low-rank update between shots (peft LoRA on all projections, merged "
        "after each shot); 0: off")})
    lora_steps: int = field(default=20, metadata={"help": "LoRA steps of that update per shot"})
    lora_lr: float = field(default=1e-4, metadata={"help": "learning rate of that LoRA update"})
    # auto: 2:4 50% on SmolLM2 went from 3.74x to 3.46x dense on the domain protocol (pydocs_eval 3.11x -> 2.66x,
    # SparseGPT 2.62x); structured 20%: calibration held-out 50.08 -> 49.38, pydocs_eval 31.81 -> 31.86 (a tie) for
    # 1.4x the time
    propagate: bool | None = field(default=None, metadata={"help": (
        "curvature=kfac: after the decision, update the decoder layer by layer, each layer's A re-collected from "
        "the calibration inputs as the already-updated layers below now produce them (SparseGPT's sequential "
        "pass; the costs and G stay those of the shot's K-FAC pass); false: every update uses the shot's A; "
        "null = true for the mask modes (unstructured, 2:4), false for structured")})
    layers_per_pass: int = field(default=0, metadata={"help": (
        "K-FAC factors of how many decoder layers are accumulated per forward/backward pass; 0 = all that fit "
        "in about half of the free device memory (more passes, bounded memory)")})
    compute_device: str = field(default="", metadata={"help": (
        "where layerwise mode runs each layer (\"\" = the model's device); lets a CPU-resident model use a GPU")})
    solver: str = field(default="sequential", metadata={"help": (
        "weight update of unstructured / 2:4: sequential: SparseGPT-style column pass, O(out * in^2) per matrix "
        "(a removed column only updates the columns after it); joint: exact per-row OBS solve, in^3 per row, slow")})
    select: str = field(default="adaptive", metadata={"help": (
        "which weights unstructured / 2:4 remove: adaptive: the sequential pass picks them from the weights as "
        "updated so far (SparseGPT's choice), at each matrix's share (--layout uniform: the same share everywhere; "
        "per-layer: the global K-FAC allocation); costs: the cheapest by the shot's K-FAC costs, fixed before the "
        "updates (always so with solver=joint or update=false)")})
    # false: on SmolLM2 at 50% unstructured (uniform, 16 x 256 calibration) spreading took pydocs_eval (4 windows)
    # from 29.9 to 37.0: the per-row solve drops K's cross-row blocks, so spreading its result through G^-1 is not
    # the Kronecker optimum and can undo more than it compensates
    spread: bool = field(default=False, metadata={"help": (
        "solver=sequential: spread each row's OBS update over the other rows through G^-1 (as the joint solver "
        "does); false: rows independent, as in SparseGPT")})
    solve_chunk: int = field(default=64, metadata={"help": (
        "rows per batched solve of solver=joint (memory: rows * in^2 floats)")})

    @property
    def propagates(self) -> bool:
        """Whether the updates see the already-updated layers' outputs (``propagate``, resolved by mode)."""
        return self.mode != "structured" if self.propagate is None else bool(self.propagate)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ShearHubError(f"surgeon mode {self.mode!r} is unknown; use --option mode= one of {', '.join(MODES)}")
        if self.curvature not in CURVATURES:
            raise ShearHubError(f"surgeon curvature {self.curvature!r} is unknown; use --option curvature=kfac or layerwise")
        if self.fisher not in FISHERS:
            raise ShearHubError(f"surgeon fisher {self.fisher!r} is unknown; use --option fisher=empirical or sampled")
        if self.coupling not in ("consumer", "sum"):
            raise ShearHubError(f"surgeon coupling {self.coupling!r} is unknown; use --option coupling=consumer or sum")
        if self.solver not in SOLVERS:
            raise ShearHubError(f"surgeon solver {self.solver!r} is unknown; use --option solver=sequential or joint")
        if self.select not in ("adaptive", "costs"):
            raise ShearHubError(f"surgeon select {self.select!r} is unknown; use --option select=adaptive or costs")
        if not isinstance(self.shots, int) or self.shots < 1:
            raise ShearHubError(f"surgeon shots must be a positive integer, got {self.shots!r}; e.g. --option shots=4")
        if self.min_keep is not None and not 0 <= self.min_keep < 1:
            raise ShearHubError(f"surgeon min_keep must be in [0, 1), got {self.min_keep!r}; e.g. --option min_keep=0.25")
        if self.damp_g < 0 or self.damp_a < 0:
            raise ShearHubError("surgeon damping must be >= 0; e.g. --option damp_g=0.01")
        if self.lora_rank < 0 or self.lora_steps < 0 or self.layers_per_pass < 0 or self.solve_chunk < 1:
            raise ShearHubError("surgeon lora_rank, lora_steps and layers_per_pass must be >= 0, solve_chunk >= 1")
