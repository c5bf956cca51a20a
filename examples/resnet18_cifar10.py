# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning ResNet18 on CIFAR-10: the seed recipe, and the same story with freezeflow
#
# The tutorial this project grew from fine-tunes an ImageNet ResNet18 on CIFAR-10 in two
# steps: freeze the whole network, replace the classifier with a small head
# (`Linear(512, 128) -> ReLU -> Dropout(0.5) -> Linear(128, 10)`), train the head for 5 epochs
# with Adam at 1e-3, then unfreeze `layer4` and train for 10 more epochs at 1e-5.
#
# Its PyTorch listing has two quiet bugs, and this notebook runs it as written to show both:
#
# 1. It prints `running_loss / len(train_loader)` but never adds anything to `running_loss`,
#    so every epoch reports a loss of `0.0`; and it never evaluates, so it never finds out.
# 2. "Frozen" is only `requires_grad = False`. `model.train()` still puts every BatchNorm
#    layer of the frozen backbone in training mode, so their running statistics follow the
#    CIFAR-10 batches: the pretrained backbone changes during the "head only" phase.
#
# Then the same recipe with freezeflow: `replace_head`, a gradual schedule (head, then
# `layer4`, then `layer3`, with discriminative learning rates and weight decay), `plan`
# and `summary` tables to see what trains when, and `fit()`, which reports the real loss,
# evaluates every epoch and keeps frozen BatchNorm statistics fixed (`norm="eval"`).

# %% tags=["parameters"]
# "offline": the shipped 7,000-image CIFAR-10 subset (a few hundred images of it), random
# weights, 32 px, one epoch per stage: runs in seconds on a laptop CPU, needs no network.
# "online": ImageNet weights and the full CIFAR-10 (downloaded by torchvision), the seed's
# epochs (5 + 10); meant for a machine with a network and, ideally, a GPU.
MODE = "offline"
IMAGE_SIZE = None  # None: 32 px offline (the seed's size), 224 px online

# %% [markdown]
# **Offline mode exercises the code, not the accuracy.** It trains a randomly initialised
# ResNet18 (no ImageNet weights without a network) on a few hundred 32 px images for a handful
# of steps, so its losses and accuracies say nothing about fine-tuning; everything else (the
# seed's two bugs, the BatchNorm drift, the tables, the schedule) is real. Set
# `MODE = "online"` for the real experiment.
#
# Online mode upsamples CIFAR-10 to 224 px by default: ImageNet features are tuned to that
# scale, and at 32 px `layer4` of a ResNet sees a 1x1 feature map. Set `IMAGE_SIZE = 32` to
# run at the seed's own size (much faster, lower accuracy).

# %%
import copy
import os
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUBSET_DIR,
    load_cifar10_subset,
    try_download_cifar10,
    unpack_cifar10_subset,
)
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets, transforms

import freezeflow as ff

if MODE not in ("offline", "online"):
    raise ValueError(f"MODE must be 'offline' or 'online', got {MODE!r}")
ONLINE = MODE == "online"
SIZE = IMAGE_SIZE or (224 if ONLINE else 32)
HEAD_EPOCHS, FINETUNE_EPOCHS = (5, 10) if ONLINE else (1, 1)  # the seed's 5 + 10 online
BATCH_SIZE = 64 if ONLINE else 32  # the seed's 64; 32 offline for a few more steps
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
started = time.perf_counter()
print(f"mode {MODE}: {SIZE} px, epochs {HEAD_EPOCHS} + {FINETUNE_EPOCHS}, device {DEVICE}")

# %% [markdown]
# ## Data
#
# Offline: 128 training and 64 test images of the shipped subset (`examples/common.py`),
# decoded into tensors with ImageNet normalisation. Online: the full CIFAR-10 (50,000 + 10,000
# images) from torchvision, resized to `SIZE` and normalised with ImageNet's mean and
# standard deviation, which is what the pretrained weights expect (the seed's
# `Normalize((0.5,), (0.5,))` is not). If the download fails, the whole shipped subset is used.
# Both loops below see the same batches.

# %%
if ONLINE:
    tf = transforms.Compose(
        [
            transforms.Resize(SIZE),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    root = SUBSET_DIR.parent.parent / "output" / "cifar10"  # examples/output: git-ignored
    if try_download_cifar10(root):
        train_dataset = datasets.CIFAR10(root=root, train=True, transform=tf)
        test_dataset = datasets.CIFAR10(root=root, train=False, transform=tf)
    else:
        subset = unpack_cifar10_subset()
        train_dataset = datasets.ImageFolder(subset / "train", transform=tf)
        test_dataset = datasets.ImageFolder(subset / "test", transform=tf)
    workers = min(4, os.cpu_count() or 1)
else:
    (x_train, y_train), (x_test, y_test) = load_cifar10_subset(
        SIZE, train_limit=128, test_limit=64, normalize="imagenet"
    )
    train_dataset, test_dataset = TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)
    workers = 0

train_loader = DataLoader(
    train_dataset,
    batch_size=BATCH_SIZE,
    shuffle=True,
    num_workers=workers,
    generator=torch.Generator().manual_seed(0),
)
test_loader = DataLoader(test_dataset, batch_size=BATCH_SIZE, shuffle=False, num_workers=workers)
print(f"{len(train_dataset):,} training images, {len(test_dataset):,} test images")


# %% [markdown]
# ## The pretrained network, and a BatchNorm probe
#
# `backbone()` gives the same starting network to both loops: ResNet18 with ImageNet weights
# online, a seeded random ResNet18 offline. `bn_stats` copies every BatchNorm layer's
# `running_mean` and `running_var`; `max_drift` is the largest absolute change since a copy.


# %%
def backbone() -> nn.Module:
    if ONLINE:
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        return torchvision.models.resnet18(weights=weights)
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


def bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buf}": getattr(m, buf).detach().cpu().clone()
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for buf in ("running_mean", "running_var")
    }


def max_drift(before: dict[str, torch.Tensor], model: nn.Module) -> float:
    after = bn_stats(model)
    return max((after[k] - v).abs().max().item() for k, v in before.items())


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy: what the seed never measures."""
    model.eval()
    loss = correct = n = 0.0
    for images, labels in loader:
        images, labels = images.to(DEVICE), labels.to(DEVICE)
        outputs = model(images)
        loss += nn.functional.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        n += len(labels)
    return loss / n, correct / n


# %% [markdown]
# ## 1. The seed's loop, as written
#
# The listing below is the tutorial's, with its bugs. Three things are added, each marked
# `# added`: moving the model and batches to `DEVICE` (the seed trains on the CPU), the epoch
# counts from the top of the notebook, and two probes: a copy of the BatchNorm statistics
# before training and a list of the losses the loop prints.

# %%
model = backbone()
initial_weights = copy.deepcopy(model.state_dict())  # added: the freezeflow run starts here too

# 凍結所有層 (freeze every layer)
for param in model.parameters():
    param.requires_grad = False

# 替換最後的全連接層 (replace the last fully connected layer)
num_features = model.fc.in_features
model.fc = nn.Sequential(
    nn.Linear(num_features, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
)
model.to(DEVICE)  # added
bn_before = bn_stats(model)  # added
seed_printed = []  # added

optimizer = optim.Adam(model.fc.parameters(), lr=0.001)
criterion = nn.CrossEntropyLoss()

# 訓練模型 (train the head)
for epoch in range(HEAD_EPOCHS):
    model.train()
    running_loss = 0.0
    for images, labels in train_loader:
        images, labels = images.to(DEVICE), labels.to(DEVICE)  # added
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()

    print(f"Epoch {epoch + 1}, Loss: {running_loss / len(train_loader)}")
    seed_printed.append(running_loss / len(train_loader))  # added

seed_drift = max_drift(bn_before, model)  # added: after the head-only phase

# 解凍 ResNet18 的後幾層 (unfreeze layer4)
for param in model.layer4.parameters():
    param.requires_grad = True

# 使用較小學習率進行微調 (fine-tune with a smaller learning rate)
optimizer = optim.Adam(model.parameters(), lr=1e-5)

for epoch in range(FINETUNE_EPOCHS):
    model.train()
    running_loss = 0.0
    for images, labels in train_loader:
        images, labels = images.to(DEVICE), labels.to(DEVICE)  # added
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()

    print(f"Epoch {epoch + 1}, Loss: {running_loss / len(train_loader)}")
    seed_printed.append(running_loss / len(train_loader))  # added

# %% [markdown]
# Every printed loss is `0.0`, whatever the network did. Measured properly, after the fact:

# %%
assert all(v == 0.0 for v in seed_printed)
seed_val_loss, seed_val_acc = evaluate(model, test_loader)
print(f"the seed loop printed the losses {seed_printed}")
print(f"its model's real test loss {seed_val_loss:.4f}, test accuracy {seed_val_acc:.3f}")
print(f"its frozen backbone's BatchNorm statistics moved by up to {seed_drift:.4g}")

# %% [markdown]
# ## 2. The same story with freezeflow
#
# The same starting weights and the seed's head, built by `ff.replace_head`. The schedule
# unfreezes gradually, from the output down, with small and discriminative learning rates:
#
# | stage | from epoch | trainable | learning rates |
# |---|---|---|---|
# | `head` | 0 | the new head | 1e-3 (the seed's head LR) |
# | `layer4` | 5 (1 offline) | + `layer4` | 1e-4 for the head, halved per block going down |
# | `layer3` | 10 (2 offline) | + `layer3` | the same rule, one level deeper |
#
# `lr_decay=0.5` gives each block half the LR of the block above it: the head at 1e-4,
# `layer4.1` at 5e-5, `layer4.0` at 2.5e-5, and in the last stage `layer3.1` at 1.25e-5 and
# `layer3.0` at 6.25e-6, so the deepest unfrozen block trains at about the seed's 1e-5 while
# the head keeps learning faster. Pretrained features near the input are the most generic and
# are moved the least; `layer1`, `layer2` and the stem never train. Weight decay 0.05
# (AdamW's decoupled decay, `fit`'s default optimizer; never on biases and BatchNorm
# parameters) regularises what trains against overfitting a small dataset. It pulls weights
# towards zero, not towards their pretrained values: the small LRs are what keep the backbone
# close to ImageNet's. The fine-tuning epochs are the seed's 10, split between the two stages.

# %%
model = backbone()
model.load_state_dict(initial_weights)
head = ff.replace_head(model, 10, hidden=128, dropout=0.5)
print(head)

STAGE_EPOCHS = FINETUNE_EPOCHS // 2 if ONLINE else 1
schedule = ff.Schedule(
    [
        ff.Stage("fc", lr=1e-3, weight_decay=0.05, name="head"),
        ff.Stage("layer4", lr=1e-4, lr_decay=0.5, start=HEAD_EPOCHS, name="layer4"),
        ff.Stage("layer3", lr=1e-4, lr_decay=0.5, start=HEAD_EPOCHS + STAGE_EPOCHS, name="layer3"),
    ]
)
EPOCHS = HEAD_EPOCHS + 2 * STAGE_EPOCHS

# %% [markdown]
# `ff.plan` shows, before anything changes, what each stage makes trainable, and every
# parameter group's LR and weight decay:

# %%
print(ff.plan(model, schedule))
fig, ax = plt.subplots(figsize=(8, 4))
plan_figure = ff.plan(model, schedule).plot(EPOCHS, ax=ax)  # inline: shown under the cell

# %% [markdown]
# `fit()` builds the `GradualUnfreezer` from the schedule, changes stages at the start of
# their epochs, and evaluates after every epoch. A small callback probes the BatchNorm
# statistics when the head-only phase ends, exactly where the seed's drift was measured.


# %%
class DriftProbe(ff.callbacks.Callback):
    def __init__(self, before: dict[str, torch.Tensor]) -> None:
        self.before = before
        self.drift: float | None = None

    def on_stage_change(self, run: ff.training.Run, transition: ff.unfreezer.Transition) -> None:
        if transition.stage_index == 1:  # the head-only stage just ended
            self.drift = max_drift(self.before, run.model)


probe = DriftProbe(bn_stats(model))
ff.training.seed_everything(0)
history = ff.fit(
    model,
    train_loader,
    val_data=test_loader,
    schedule=schedule,
    epochs=EPOCHS,
    device=DEVICE,
    callbacks=[probe, ff.callbacks.ProgressBar(tqdm=False)],
)

# %% [markdown]
# ## What changed, and what did not
#
# The drift of the backbone's BatchNorm statistics over the head-only phase, seed loop versus
# `fit()` with its default `norm="eval"` (frozen BatchNorm layers run in inference mode, as in
# Keras):

# %%
print(
    "BatchNorm drift after the head-only phase (max abs change of running_mean/running_var): "
    f"seed loop {seed_drift:.6g}, freezeflow norm='eval' {probe.drift:.6g}"
)
print(f"the seed loop printed losses {seed_printed}")
print(f"fit() reported train losses {[round(r['train_loss'], 4) for r in history.epochs]}")

# %% [markdown]
# `ff.summary` after training: the stem, `layer1` and `layer2` were never unfrozen, and their
# BatchNorm layers are still in `eval` (locked by freezeflow) even though `fit()` called
# `model.train()` every epoch; their statistics are still the pretrained ones.

# %%
print(ff.summary(model))
never = {
    k: v.cpu()
    for k, v in initial_weights.items()
    if k.endswith(("running_mean", "running_var")) and not k.startswith(("layer3", "layer4"))
}
print(f"drift of the never-unfrozen blocks after all stages: {max_drift(never, model):.6g}")

# %% [markdown]
# The history: one record per epoch (losses, accuracy, per-group LRs, trainable count) and one
# per stage change; `plot()` draws the curves with a dashed line where each stage begins.

# %%
last = history.epochs[-1]
accuracy = last["metrics"]["val_accuracy"]
print(f"final test loss {last['val_loss']:.4f}, test accuracy {accuracy:.3f}")
history.plot()  # a Figure: the notebook shows it under the cell

# %%
print(f"notebook ran in {time.perf_counter() - started:.1f} s")
