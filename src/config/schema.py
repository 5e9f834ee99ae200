"""The configuration schema: every key of config.ini is defined here, once.

Each section is a frozen dataclass; each field carries its type (the annotation),
its default, and metadata (help text, allowed values, range, aliases, CLI flag).
The loader, the validation, the shipped INI documentation, the CLI flags and the
hyperopt/sweep key mapping all read these definitions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def key(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    aliases: dict[str, str] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    flag: str | None = None,
    metric: bool = False,
    prefixes: tuple[str, ...] = (),
    prefix_min: int | None = None,
) -> Any:
    """Declare one config key: default plus the metadata the rest of the tool reads.

    `metric`: the value names a validation metric, checked against the names src/config/names.py
    publishes. `prefixes`: besides the choices, any value made of one of them and a name is allowed;
    with `prefix_min`, one of them and a whole number >= prefix_min."""
    meta = {
        "help": help,
        "choices": choices,
        "aliases": aliases or {},
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "flag": flag,
        "metric": metric,
        "prefixes": prefixes,
        "prefix_min": prefix_min,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = key(32, "Images per optimisation step.", min=1)
    learning_rate: float = key(0.001, "Initial learning rate.", min=0, min_exclusive=True)
    n_epochs: int = key(100, "Maximum number of training epochs.", min=1, flag="--epochs")
    device: str = key(
        "auto",
        "Where to train: auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps.",
    )
    num_workers: str = key(
        "auto",
        "DataLoader worker processes (kept across epochs), or auto: 0 on a CPU (the training step needs every "
        "core, and a batch of decoded images gathered from the cache costs little), 4 per GPU process (fewer "
        "where a node's cores are shared by many), so that the next batches are ready while the GPU steps.",
    )
    pin_memory: bool = key(True, "Pin host memory for faster, non-blocking copies to a GPU (ignored on CPU).")
    seed: int = key(42, "Seed for the split, initialisation and data order: same seed, same run.", min=0)
    precision: str = key(
        "auto",
        "Arithmetic: fp32, bf16 (autocast on CPU or GPU), fp16 (CUDA, with a gradient scaler); auto "
        "times a few training steps of the model in each one the device runs natively and picks the "
        "fastest (fp32 unless another is over 5% faster), cached per model, input size and machine.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: str = key(
        "auto", "Channels-last memory format; auto: on whenever reduced precision is used.",
        choices=("auto", "true", "false"),
    )
    gradient_accumulation_steps: int = key(
        1, "Batches whose gradients are summed before each optimizer step (effective batch = "
        "batch_size x this).", min=1)
    max_grad_norm: float = key(0.0, "Clip the gradient norm to this; 0 disables clipping.", min=0)
    compile: bool = key(False, "torch.compile the model (faster steps after a slow first one).")
    deterministic: bool = key(
        False, "Deterministic algorithms (PyTorch's, cuDNN's) and exact fp32 matrix products, so that the same "
        "seed gives the same run on a GPU too; false: cuDNN autotunes and CUDA's fp32 uses TF32 (faster).")
    sync_batchnorm: str = key(
        "auto", "Distributed runs on GPUs: BatchNorm statistics over all processes' images; auto: when each "
        "process gets fewer than 16 images per step.", choices=("auto", "true", "false"))
    max_nonfinite_steps: int = key(
        10, "Steps with a non-finite loss or gradient are skipped; this many in a row stop training.",
        min=1)
    unfreeze_epoch: int = key(
        0, "With [Model] freeze: from this epoch on the whole model trains (the heads first, on the frozen "
        "backbone, then everything); 0: the frozen part stays frozen.", min=0)
    ema_decay: float = key(
        0.0, "Keep an exponential moving average of the weights, ema = decay x ema + (1 - decay) x weights after "
        "every optimizer step, and validate, checkpoint and export it in place of the raw weights (e.g. 0.999; "
        "about 1 / (1 - decay) steps are averaged); 0: off.", min=0, max=1)
    feature_cache: bool = key(
        True, "With [Model] freeze = backbone: compute the frozen backbone's pooled zone features once per image, "
        "keep them beside the image cache (reused by later runs, hyperopt trials, sweep runs and cv folds) and "
        "train the heads on them with no backbone pass; augmentation cannot change them (a warning says so). "
        "false: run the frozen backbone on every (augmented) batch.")
    output_dir: str = key("models", "Directory under which each run gets its own sub-directory.")
    run_name: str = key("run", "Suffix of the run directory name <timestamp>_<arch>_<run_name>.")


@dataclass(frozen=True)
class ModelConfig:
    model_arch: str = key(
        "resnet50",
        "Backbone: resnet50, densenet121 (ImageNet weights), chexnet (DenseNet121 with torchxrayvision's "
        "chest X-ray weights), custom_cnn (alias custom_1, a small 5-layer CNN, fast on CPU), vit_b_16, "
        "raddino (Microsoft's RAD-DINO, a DINOv2 ViT-B/14 trained on chest X-rays, native 518 px), "
        "timm:<name> (any timm model) or hf:<repo> (any transformers vision backbone with a patch grid). "
        "`--mode models` lists them.",
        choices=("resnet50", "densenet121", "chexnet", "custom_cnn", "vit_b_16", "raddino"),
        aliases={"custom_1": "custom_cnn"},
        prefixes=("timm:", "hf:"),
    )
    pretrained: bool = key(
        True,
        "Start from the backbone's pretrained weights: torchvision's ImageNet ones (TORCH_HOME cache), "
        "torchxrayvision's (chexnet), or the Hugging Face hub's (raddino, timm:, hf:; HF_HOME cache, "
        "HF_HUB_OFFLINE=1 never downloads). Set false to train from scratch.",
    )
    pretrained_weights: str = key(
        "", "chexnet: which torchxrayvision weights, e.g. densenet121-res224-all (empty: that one), -chex, -nih, "
            "-mimic_ch, -mimic_nb, -pc, -rsna.")
    pretrained_path: str = key(
        "", "Local weights to initialise the backbone from instead of downloading: a state-dict file, for "
            "raddino and hf: a snapshot directory (config.json + model.safetensors), or a checkpoint of this tool "
            "(a run's best_model.pth, of the same model_arch), whose backbone is taken and whose input "
            "normalisation is the weights'."
    )
    freeze: str = key(
        "none",
        "Which backbone weights stay fixed: none; backbone (only the zone heads train, e.g. a linear probe of "
        "RAD-DINO; see [Training] feature_cache); all_but_last:N (the last N blocks train: ResNet stages, "
        "DenseNet blocks, ViT/DINOv2 encoder layers, timm's stages or blocks). Frozen BatchNorm keeps its "
        "statistics; the optimizer holds only the weights that train.",
        choices=("none", "backbone"),
        prefixes=("all_but_last:",),
        prefix_min=1,
    )
    num_classes: int = key(
        5, "Classes per zone: 0 Normal, 1 Mild, 2 Moderate, 3 Severe, 4 Unknown.", min=5, max=5
    )
    dropout: float = key(0.5, "Dropout before each zone classifier.", min=0, max=0.95)
    zone_pooling: str = key(
        "global",
        "global: every zone head sees the pooled whole image; regional: each head pools its "
        "own region of the feature map (3 rows x 2 columns).",
        choices=("global", "regional"),
    )
    zone_split: str = key(
        "lung",
        "With lung masks ([Data] mask_dir): lung cuts each lung's own height into upper, middle and lower "
        "thirds; image cuts at thirds of the image height, as upstream CSI-Predictor does.",
        choices=("lung", "image"),
    )
    zone_focus: str = key(
        "pool",
        "With lung masks: pool runs the backbone once and each zone head averages the feature map weighted by "
        "its zone's mask; zero_mask and attention_mask are upstream's masking, one backbone pass per zone (six): "
        "the normalised image times the zone's mask (zero_mask), or times 0.1 outside the zone (attention_mask), "
        "each head pooling its own pass's whole map.",
        choices=("pool", "zero_mask", "attention_mask"),
    )


@dataclass(frozen=True)
class OptimizationConfig:
    optimizer: str = key("adam", "Optimiser.", choices=("adam", "adamw", "sgd", "rmsprop"))
    weight_decay: float = key(0.0001, "Weight decay.", min=0)
    no_decay_norm_bias: bool = key(True, "Exempt biases and normalisation weights from weight decay.")
    momentum: float = key(0.9, "Momentum (sgd and rmsprop).", min=0, max=1)
    nesterov: bool = key(False, "Nesterov momentum (sgd).")
    scheduler: str = key(
        "reduce_lr_on_plateau",
        "Learning-rate schedule: reduce_lr_on_plateau (follows the monitored metric), step, "
        "exponential, cosine, cosine_warm_restarts, onecycle (stepped every optimizer step), "
        "warmup_cosine (linear warmup for warmup_epochs, then cosine) or none.",
        choices=("reduce_lr_on_plateau", "step", "exponential", "cosine", "cosine_warm_restarts", "onecycle",
                 "warmup_cosine", "none"),
    )
    patience: int = key(10, "reduce_lr_on_plateau: epochs without improvement before cutting.", min=0)
    factor: float = key(0.5, "reduce_lr_on_plateau and step: multiply the LR by this.", min=0,
                        max=1, min_exclusive=True)
    step_size: int = key(30, "step: epochs between LR cuts.", min=1)
    gamma: float = key(0.95, "exponential: multiply the LR by this every epoch.", min=0, max=1, min_exclusive=True)
    restart_epochs: int = key(10, "cosine_warm_restarts: epochs of the first cycle (each next one is twice as long).",
                              min=1)
    warmup_epochs: int = key(1, "warmup_cosine: epochs of linear warmup; onecycle: their share sets pct_start.",
                             min=0)
    min_lr: float = key(1e-7, "Lowest learning rate of plateau and cosine schedules.", min=0)
    layer_decay: float = key(
        1.0, "Layer-wise learning-rate decay: the backbone's last block learns at learning_rate x this, each "
        "block below at this times the one above, the stem last; 1: every layer at learning_rate.",
        min=0, max=1, min_exclusive=True)
    head_lr_multiplier: float = key(
        1.0, "The zone heads learn at learning_rate x this (e.g. 10 to fine-tune a pretrained backbone gently).",
        min=0, min_exclusive=True)


@dataclass(frozen=True)
class LossConfig:
    unknown_weight: float = key(
        0.3, "Weight of the Unknown class (4) in the loss relative to the scores.", min=0
    )
    loss: str = key(
        "weighted_ce",
        "weighted_ce: cross-entropy; focal: focal loss (focal_gamma); label_smoothing: cross-entropy "
        "with smoothed targets (label_smoothing); ordinal: scores 0<1<2<3 as ordered (cumulative "
        "logits), plus a known/Unknown head.",
        choices=("weighted_ce", "focal", "label_smoothing", "ordinal"),
    )
    class_weights: str = key(
        "none", "balanced: weight each zone's classes by inverse frequency in the training split.",
        choices=("none", "balanced"))
    focal_gamma: float = key(2.0, "focal: focusing exponent.", min=0)
    label_smoothing: float = key(
        0.1, "label_smoothing: share of a known score's target spread evenly over the scores 0-3 "
        "(Unknown targets stay one-hot).", min=0, max=0.5)


@dataclass(frozen=True)
class DistillationConfig:
    teacher_checkpoint: str = key(
        "", "Checkpoint of a trained teacher run; when set, the configured model learns from its soft "
        "targets too.")
    temperature: float = key(4.0, "Softening temperature of teacher and student distributions.", min=0,
                             min_exclusive=True)
    alpha: float = key(0.7, "Weight of the distillation term; 1 - alpha weighs the label loss.", min=0, max=1)


@dataclass(frozen=True)
class AugmentationConfig:
    enabled: bool = key(True, "Augment training batches (never validation, test or prediction).")
    rotation_degrees: float = key(5.0, "Random rotation within +/- this many degrees.", min=0, max=45)
    scale: float = key(0.05, "Random zoom within 1 +/- this.", min=0, max=0.5)
    translate: float = key(0.05, "Random shift within +/- this fraction of the image side.", min=0, max=0.5)
    brightness: float = key(0.1, "Random brightness offset within +/- this.", min=0, max=1)
    contrast: float = key(0.1, "Random contrast factor within 1 +/- this.", min=0, max=1)
    gamma: float = key(0.1, "Random gamma within 1 +/- this.", min=0, max=0.9)
    noise_std: float = key(0.01, "Standard deviation of added Gaussian noise (0..1 intensity units).", min=0,
                           max=0.5)
    erasing_probability: float = key(0.1, "Probability of erasing a random rectangle of an image.", min=0, max=1)
    horizontal_flip: float = key(
        0.0, "Probability of a horizontal flip, which also swaps the left and right zone labels (a "
        "flipped chest has its right lung on the other side).", min=0, max=1)


@dataclass(frozen=True)
class CallbacksConfig:
    save_top_k: int = key(
        0, "Also keep the checkpoints of the best k epochs as checkpoint_epoch_<N>.pth; best_model.pth (the "
        "best) and last_model.pth (the latest, to resume from) are always written.", min=0)
    early_stopping_patience: int = key(
        10, "Stop after this many epochs without improvement of the monitored metric (0 = never).",
        min=0,
    )
    early_stopping_min_delta: float = key(0.001, "Smallest change that counts as improvement.", min=0)
    restore_best_weights: bool = key(
        True, "At the end, load the best epoch's weights back into the model."
    )
    monitor: str = key(
        "val_f1_macro",
        "Validation metric that picks the best checkpoint, drives early stopping and the plateau "
        "scheduler.",
        metric=True,
    )
    mode: str = key(
        "auto",
        "Whether the monitored metric should go up or down; auto: down for losses and errors, "
        "up otherwise.",
        choices=("auto", "max", "min"),
    )


@dataclass(frozen=True)
class DataConfig:
    labels_csv: str = key(
        "data/labels.csv", "Labels CSV: FileID + six zone columns (+ optional csi, PatientID, split, path); several "
        "readers' scores as <zone>@<reader> columns (e.g. right_sup@r1), combined per consensus.")
    label_format: str = key(
        "csi",
        "csi: the labels CSV above; brixia: a file of the BrixIA COVID-19 data set as distributed, recognised by "
        "its columns: metadata_global (Filename, Subject, BrixiaScore, ConsensusTestset), the consensus file "
        "(MeanA..MeanF, ModeA..ModeF) or the public subset's annotations (S-A..S-F senior, J-A..J-F junior "
        "reader); zones A-F become right_sup, right_mid, right_inf, left_sup, left_mid, left_inf.",
        choices=("csi", "brixia"))
    consensus: str = key(
        "mean",
        "How several readers' scores of a zone make the target: mean or median of the readers who scored it, "
        "a half rounded up; majority: the score most of them gave, a tie going to the tied score nearest the "
        "median (then the higher). A zone is Unknown when more than half of the readers who read the image "
        "marked it so, or none scored it.",
        choices=("mean", "median", "majority"))
    image_dir: str = key("data/images", "Directory holding the image files named by FileID; eval --labels: the "
                         "external set's images.", flag="--image-dir")
    image_extension: str = key(
        "",
        "Extension of the image files (e.g. .png); empty: find each file whatever its supported "
        "extension (.png .jpg .jpeg .dcm .dicom .ima .nii .nii.gz, any case) and DICOM files with "
        "no or another extension (recognised by their content).",
    )
    recursive: bool = key(
        False, "Also look for images in sub-folders of image_dir; their FileID is the path relative to "
        "image_dir without extension, e.g. patient7/study2/img001.")
    allow_outside_paths: bool = key(
        False, "Let FileIDs and the path column of the labels CSV name files outside image_dir ('..', "
        "absolute paths, symbolic links out of it).")
    volume_slice: str = key(
        "error",
        "A volume (multi-frame DICOM, 3-D or 4-D NIfTI) instead of a 2-D image: error refuses it; first, "
        "middle or last take that frame (DICOM), axial slice (3-D NIfTI) or volume and slice (4-D); index "
        "takes volume_index.",
        choices=("error", "first", "middle", "last", "index"),
    )
    volume_index: int = key(0, "volume_slice = index: 0-based frame, slice (and 4-D volume) to take.", min=0)
    csv_separator: str = key("", "Separator of the labels CSV; empty: detect ';', ',' or tab.")
    csv_encoding: str = key(
        "auto", "Text encoding of the labels CSV (utf-8, cp1252, latin-1, ...); auto: UTF-8 (with or without "
        "BOM), UTF-16 with a BOM, else Windows-1252 with a warning.")
    train_fraction: float = key(0.70, "Share of images (or patients) for training.", min=0, max=1)
    val_fraction: float = key(0.15, "Share for validation.", min=0, max=1)
    test_fraction: float = key(0.15, "Share for testing.", min=0, max=1)
    image_size: int = key(224, "Side in pixels of the square model input.", min=16, max=4096)
    resize_mode: str = key(
        "plain",
        "plain: stretch to a square; pad: keep the aspect ratio and pad with black.",
        choices=("plain", "pad"),
    )
    clip_low_percentile: float = key(0.5, "Intensities below this percentile are clipped.", min=0, max=50)
    clip_high_percentile: float = key(99.5, "Intensities above this percentile are clipped.", min=50, max=100)
    normalization: str = key(
        "weights",
        "Input normalisation: weights (the mean/std the backbone's pretrained weights were trained with, "
        "read from their metadata; ImageNet's grey mean/std when trained from scratch), imagenet (grey "
        "mean/std of ImageNet), medical (0.5/0.25), simple (0.5/0.5, i.e. -1..1) or custom "
        "(normalization_mean/std). Training records the values used in the run's config.",
        choices=("weights", "imagenet", "medical", "simple", "custom"),
    )
    normalization_mean: float = key(0.5, "custom normalisation: mean subtracted.", min=0, max=1)
    normalization_std: float = key(0.25, "custom normalisation: std divided by.", min=0, min_exclusive=True)
    cache_dir: str = key(
        "data/cache", "Where decoded, resized images are kept (memory-mapped) across epochs and runs."
    )
    cache_dtype: str = key(
        "uint16", "Pixel type of the cache: uint16 keeps 16-bit detail, uint8 halves its size.",
        choices=("uint8", "uint16"),
    )
    on_missing: str = key(
        "error",
        "A missing, empty or corrupt image: error stops and lists them; skip drops them with a "
        "warning and a report.",
        choices=("error", "skip"),
    )
    mask_dir: str = key(
        "", "Lung masks: per FileID upstream's <FileID>_left_lung_mask.png and <FileID>_right_lung_mask.png, or "
        "one label image <FileID>.png (0 background, one value per lung); .png, .nii or .nii.gz. A lung's "
        "side is read from its position on the image, so naming by image or patient side both work. Empty: "
        "no masks, the zones are a fixed 3x2 grid. predict and explain read the masks of the images they "
        "score from here (--masks DIR).", flag="--masks")
    on_missing_mask: str = key(
        "error",
        "An image whose lung masks are missing or empty: error stops naming the file; grid gives it the "
        "fixed 3x2 grid's zones (and lets a model trained with masks score images without any: predict "
        "and explain without --masks).",
        choices=("error", "grid"),
    )


@dataclass(frozen=True)
class EvaluationConfig:
    ahf_low_threshold: float = key(1.3, "Mean CSI at or below this is AHF class low.", min=0, max=3)
    ahf_high_threshold: float = key(2.2, "Mean CSI above this is AHF class high.", min=0, max=3)
    checkpoint: str = key(
        "best", "Which checkpoint of a run eval uses.", choices=("best", "last")
    )
    batch_size: int = key(64, "Images per batch during evaluation and prediction.", min=1)
    saliency_largest_error: int = key(
        6, "eval: Grad-CAM figures (in report.html) of this many test images with the largest CSI error.", min=0)
    saliency_random: int = key(
        6, "eval: and of this many other test images drawn at random with [Training] seed.", min=0)
    bootstrap_samples: int = key(
        1000, "Bootstrap resamples behind every 95% confidence interval eval and compare report; patients "
        "are resampled when the labels have PatientID, else images.", min=100)
    bootstrap_seed: int = key(0, "Seed of the bootstrap resamples: the same seed gives the same intervals.", min=0)
    calibrate: bool = key(
        False, "predict, and each member of an eval or predict ensemble: apply the temperature that eval fitted "
        "on the run's validation split and stored in the checkpoint, so that the probabilities written are "
        "calibrated (a single model's predicted classes do not change).")
    tta: str = key(
        "none", "Test-time augmentation in eval and predict: class probabilities averaged over the image and "
        "its horizontal mirror (flip; the mirror's left and right zone outputs are swapped back first), and "
        "also over 0.9x and 1.1x zooms of both (flip+scale).", choices=("none", "flip", "flip+scale"))
    ensemble_average: str = key(
        "auto", "How eval and predict combine the class probabilities of several checkpoints: mean, geometric "
        "(the normalised geometric mean), or auto: geometric when calibrate = true (each member then applies "
        "its own stored temperature first), else mean.", choices=("auto", "mean", "geometric"))
    outcome_column: str = key(
        "", "A binary column of the labels (0/1, true/false, yes/no; empty: not known), e.g. adjudicated acute "
        "heart failure: eval reports the AUROC of the predicted CSI (and of each reader's) with 95% CIs, ROC "
        "curves, sensitivity, specificity, PPV and NPV at ahf_low/high_threshold and at the Youden point, and the "
        "model against each reader on the same patients. Empty: no outcome.")


@dataclass(frozen=True)
class CrossValidationConfig:
    folds: int = key(
        5, "--mode cv: folds of the non-test images (grouped by PatientID, stratified on the CSI); fold k's run "
        "validates on fold k and trains on the others, in <[Training] output_dir>/cv/<run_name>/fold_<k>/.",
        min=2, flag="--folds")


@dataclass(frozen=True)
class LoggingConfig:
    log_dir: str = key("logs", "Directory of the tool's own rotating log file.")
    wandb_project: str = key("", "Weights & Biases project; empty disables W&B.", flag="--wandb-project")
    wandb_entity: str = key("", "Weights & Biases entity (user or team); empty: your default.")
    wandb_mode: str = key(
        "auto", "auto: online when logged in to W&B, offline otherwise (sync later with `wandb sync`).",
        choices=("auto", "online", "offline"))
    tensorboard: bool = key(False, "Also write TensorBoard event files under the run's logs/ directory.")


DEFAULT_SEARCH_SPACE = (
    ("Training.learning_rate", "loguniform(1e-5, 1e-2)"),
    ("Training.batch_size", "choice(8, 16, 32, 64)"),
    ("Optimization.optimizer", "choice(adam, adamw, sgd)"),
    ("Optimization.weight_decay", "loguniform(1e-6, 1e-2)"),
    ("Model.dropout", "uniform(0.1, 0.7)"),
    ("Model.model_arch", "choice(resnet50, densenet121, custom_cnn)"),
    ("Loss.unknown_weight", "uniform(0.1, 1.0)"),
    ("Optimization.scheduler", "choice(reduce_lr_on_plateau, cosine, step)"),
)


@dataclass(frozen=True)
class HyperoptConfig:
    n_trials: int = key(20, "Trials to run in this invocation (an interrupted study continues).", min=1,
                        flag="--n-trials")
    timeout: float = key(0.0, "Stop starting new trials after this many seconds; 0: no limit.", min=0,
                         flag="--timeout")
    study_name: str = key("csi_hyperopt", "Study name; the same name continues the same study.",
                          flag="--study-name")
    storage: str = key(
        "", "Optuna storage URL (sqlite:///f.db, postgresql://user:pw@host/db, ...) shared by workers; "
        "empty: a journal file under logs/hyperopt/.", flag="--storage")
    sampler: str = key("tpe", "Search algorithm.", choices=("tpe", "random", "cmaes", "gp", "grid", "qmc"),
                       flag="--sampler")
    pruner: str = key("median", "Stops unpromising trials early, from their per-epoch metric.",
                      choices=("median", "hyperband", "successive_halving", "none"), flag="--pruner")
    max_epochs: int = key(10, "Epoch budget of each trial (train-optimized uses [Training] n_epochs).",
                          min=1, flag="--max-epochs")
    n_jobs: int = key(1, "Trials run in parallel threads of this process (CPU only: on GPUs, run one worker "
                      "process per GPU, scripts/gpu_workers.sh).", min=1, flag="--n-jobs")
    metric: str = key("val_f1_macro", "Validation metric to optimise.",
                      metric=True)
    cv_folds: int = key(
        0, "0: each trial trains once on the train split; K >= 2: each trial trains on K patient-grouped "
        "folds of the non-test images and scores the mean of the folds' best metric, reported after each "
        "fold so the pruner can stop a trial between folds.", min=0)
    direction: str = key("maximize", "Whether the metric should go up or down.",
                         choices=("maximize", "minimize"))
    output_dir: str = key("models/hyperopt", "Where <study>/best_params.json, trials.csv and plots go.")
    search_space: tuple = key(
        DEFAULT_SEARCH_SPACE,
        "Search space, one line per searched key: Section.key = loguniform(a, b) | uniform(a, b) | "
        "int(a, b) | int(a, b, step) | uniform(a, b, step) | choice(v1, v2, ...). Any key may be "
        "searched. Lines in this section replace the built-in default space; --set "
        "Hyperopt.Section.key=SPEC adds or changes one line, and a one-value choice(v) pins a key.",
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; `cfg.training.batch_size` and friends."""

    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    crossvalidation: CrossValidationConfig = field(default_factory=CrossValidationConfig,
                                                   metadata={"section": "CrossValidation"})
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hyperopt: HyperoptConfig = field(default_factory=HyperoptConfig)


def section_names() -> list[str]:
    """INI section names in the order they are documented, e.g. 'Training' (the field name, capitalised
    unless its metadata spells it)."""
    return [f.metadata.get("section", f.name.capitalize()) for f in dataclasses.fields(Config)]


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    """The fields of one section (name matched case-insensitively)."""
    section_type = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section.lower()]
    return {f.name: f for f in dataclasses.fields(section_type)}


def all_keys() -> list[str]:
    """Every key as 'Section.key'."""
    return [f"{s}.{k}" for s in section_names() for k in section_fields(s)]


SEARCH_SPACE_SECTION, SEARCH_SPACE_FIELD = "Hyperopt", "search_space"


def is_search_space_entry(section: str, name: str) -> bool:
    """[Hyperopt] lines named like 'Section.key' declare the search space rather than a setting."""
    return section == SEARCH_SPACE_SECTION and "." in name
