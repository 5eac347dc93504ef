"""Classify noisy waveforms (sine, square, sawtooth) with a tiny 1-D CNN."""

# This is "a person's own" training script: mlsm runs it unchanged as the baseline, then the
# builtin agent tunes the parameters declared in `hooks.params` below. Outside mlsm the hooks do
# nothing, so `python train.py` works on its own too.

import math
import os
import time

import torch
from torch import nn

from mlsm import hooks

torch.set_num_threads(1)

cfg = hooks.params(
    lr=hooks.loguniform(1e-4, 1e-1, default=1e-4),
    channels=hooks.choice([4, 8, 16, 32], default=4),
    kernel_size=hooks.choice([3, 5, 9], default=3),
    dropout=hooks.uniform(0.0, 0.5, default=0.4),
    steps=300,
    batch_size=64,
)

CHECKPOINT = hooks.checkpoint_dir() / "last.pt"  # kept across STOP, resume and crashes
SAVE_EVERY = 100  # steps between checkpoints; a STOP (SIGTERM) saves at once too


def save(step: int, net: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Write the checkpoint atomically: a kill in the middle leaves the previous one."""
    tmp = CHECKPOINT.with_name(CHECKPOINT.name + ".tmp")
    torch.save({"step": step, "model": net.state_dict(), "opt": opt.state_dict(),
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, CHECKPOINT)


def resume(net: nn.Module, opt: torch.optim.Optimizer) -> int:
    """The last step done: the checkpoint's when mlsm resumes this iteration, else 0."""
    if not (hooks.resumed() and CHECKPOINT.exists()):
        return 0
    state = torch.load(CHECKPOINT)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    print(f"resumed from the checkpoint of step {state['step']}", flush=True)
    return int(state["step"])

LENGTH = 64
KINDS = 3


def waves(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` noisy signals of a random kind, frequency and phase, and their kind."""
    kind = torch.randint(0, KINDS, (n,), generator=gen)
    freq = 1.0 + 3.0 * torch.rand(n, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    t = torch.linspace(0, 1, LENGTH).unsqueeze(0)
    angle = 2 * math.pi * freq * t + phase
    sine = torch.sin(angle)
    square = torch.sign(sine)
    saw = 2 * torch.remainder(angle / (2 * math.pi), 1.0) - 1
    x = torch.where(kind[:, None] == 0, sine, torch.where(kind[:, None] == 1, square, saw))
    x = x + 0.8 * torch.randn(n, LENGTH, generator=gen)
    return x.unsqueeze(1), kind


def model() -> nn.Module:
    c, k = cfg.channels, cfg.kernel_size
    return nn.Sequential(
        nn.Conv1d(1, c, k, padding=k // 2), nn.ReLU(),
        nn.Conv1d(c, c, k, padding=k // 2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c, KINDS),
    )


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        logits = net(x)
    net.train()
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    x_train, y_train = waves(2000, gen)
    x_val, y_val = waves(600, gen)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    first = resume(net, opt)
    start = time.time()
    for step in range(first + 1, cfg.steps + 1):
        if hooks.stop_requested():  # STOP, --run-timeout, a preemption: save, then end
            save(step - 1, net, opt)
            raise SystemExit(143)  # 128 + SIGTERM: ended as the signal asked
        idx = torch.randint(0, len(x_train), (cfg.batch_size,))
        loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        if step % SAVE_EVERY == 0:
            save(step, net, opt)
        hooks.log(step=step, total_steps=cfg.steps, loss=loss.item())
        hooks.heartbeat(step)
        if step % 50 == 0:
            val_loss, val_acc = evaluate(net, x_val, y_val)
            hooks.log(step=step, val_loss=val_loss, val_acc=val_acc)
            print(f"step {step} | loss {loss.item():.4f} | val_acc {val_acc:.4f}", flush=True)
    val_loss, val_acc = evaluate(net, x_val, y_val)
    print(f"final | val_acc {val_acc:.4f} | val_loss {val_loss:.4f} | {time.time() - start:.1f}s")
    hooks.result(val_acc=val_acc, val_loss=val_loss, goal="maximize")


if __name__ == "__main__":
    main()
