"""Settings of the LLM Surgeon (van der Ouderaa et al., ICLR 2024); ``--option KEY=VALUE`` sets any field."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ShearHubError

MODES = ("structured", "unstructured", "2:4")
CURVATURES = ("kfac", "layerwise")
FISHERS = ("empirical", "sampled")


@dataclass
class SurgeonConfig:
    # structured: remove the graph's groups (physically smaller model); unstructured / 2:4: masks + OBS updates,
    # the saved file stays dense (same shapes, zeros inside).
    mode: str = "structured"
    # the target grows linearly over `shots` shots; curvature is recomputed from the updated model each shot.
    # 1 by default: on SmolLM2 at 20% four shots gave the same perplexity (31.65 vs 31.55, 16 windows) for 4x the
    # time; the paper uses up to 40 shots on the way to 50% -- raise it for high sparsities
    shots: int = 1
    # kfac: F ~ G (x) A from forward+backward passes of the whole model; layerwise: G = I, A from cached inputs,
    # one decoder layer on the device at a time (SparseGPT-style, for models larger than the GPU)
    curvature: str = "kfac"
    # empirical: loss on the true next tokens; sampled: labels drawn from the model's own softmax (true Fisher)
    fisher: str = "empirical"
    damp_g: float = 0.01  # relative damping: M + damp * mean(diag M) * I
    damp_a: float = 0.01
    # rank groups by cost per parameter removed (knapsack-greedy); False: raw cost (the reference sorts raw costs)
    normalize: bool = True
    # a group owning several rows/columns of a matrix (heads) costs the exact joint OBS cost of removing them
    # together; False: the sum of single-row/column costs as in the paper
    joint_cost: bool = True
    # consumer: a head / MLP channel / block is scored and compensated at its consumer (o_proj, down_proj columns)
    # only; sum: the sum over every matrix it touches (the paper's per-matrix rows + columns, double-counting)
    coupling: str = "consumer"
    # rows of G / columns of A touched together in one shot are solved jointly (correlated OBS update); False:
    # structures are only zeroed (no weight update) -- an ablation
    update: bool = True
    # optional first-order low-rank update between shots (peft LoRA on all projections, merged after each shot)
    lora_rank: int = 0
    lora_steps: int = 20
    lora_lr: float = 1e-4
    # K-FAC factors of how many decoder layers are accumulated per forward/backward pass; 0 = all that fit in
    # about half of the free device memory (more passes, bounded memory)
    layers_per_pass: int = 0
    # where layerwise mode runs each layer ("" = the model's device); lets a CPU-resident model use a GPU
    compute_device: str = ""
    # rows per batched solve in the unstructured / 2:4 weight update (memory: rows * in^2 floats)
    solve_chunk: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ShearHubError(f"surgeon mode {self.mode!r} is unknown; use --option mode= one of {', '.join(MODES)}")
        if self.curvature not in CURVATURES:
            raise ShearHubError(f"surgeon curvature {self.curvature!r} is unknown; use --option curvature=kfac or layerwise")
        if self.fisher not in FISHERS:
            raise ShearHubError(f"surgeon fisher {self.fisher!r} is unknown; use --option fisher=empirical or sampled")
        if self.coupling not in ("consumer", "sum"):
            raise ShearHubError(f"surgeon coupling {self.coupling!r} is unknown; use --option coupling=consumer or sum")
        if not isinstance(self.shots, int) or self.shots < 1:
            raise ShearHubError(f"surgeon shots must be a positive integer, got {self.shots!r}; e.g. --option shots=4")
        if self.damp_g < 0 or self.damp_a < 0:
            raise ShearHubError("surgeon damping must be >= 0; e.g. --option damp_g=0.01")
        if self.lora_rank < 0 or self.lora_steps < 0 or self.layers_per_pass < 0 or self.solve_chunk < 1:
            raise ShearHubError("surgeon lora_rank, lora_steps and layers_per_pass must be >= 0, solve_chunk >= 1")
