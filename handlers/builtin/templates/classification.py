"""Classify points of three interleaved spirals with a small MLP (by mlsm's builtin agent)."""

# The data is generated with a fixed seed, so every run sees the same train and validation sets.
# The defaults are deliberately modest; mlsm tunes the parameters declared in `hooks.params`.

import math
import os
import time

import torch
from torch import nn

from mlsm import hooks

torch.set_num_threads(1)

OBJECTIVE = "val_acc"  # the metric mlsm optimises: the builtin agent sets it from PLAN.md
GOAL = "maximize"

cfg = hooks.params(
    lr=hooks.loguniform(1e-4, 3e-1, default=3e-4),
    hidden=hooks.choice([16, 32, 64, 128], default=16),
    layers=hooks.intrange(1, 3, default=1),
    batch_size=hooks.choice([32, 64, 128, 256], default=128),
    steps=600,
    seed=0,
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


def spirals(n_per_class: int, classes: int, noise: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on `classes` interleaved spiral arms, with Gaussian noise."""
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.05, 1.0, n_per_class)
        angle = torch.linspace(0, 1.5 * math.pi, n_per_class) + c * 2 * math.pi / classes
        angle = angle + noise * torch.randn(n_per_class, generator=gen)
        xs.append(torch.stack([r * torch.sin(angle), r * torch.cos(angle)], dim=1))
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def model(hidden: int, layers: int, classes: int) -> nn.Module:
    blocks: list[nn.Module] = []
    width = 2
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, classes))


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def main() -> None:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(1234)  # the data never changes between runs
    x, y = spirals(500, 3, 0.15, gen)
    perm = torch.randperm(len(x), generator=gen)
    x, y = x[perm], y[perm]
    x_train, y_train, x_val, y_val = x[:1200], y[:1200], x[1200:], y[1200:]
    net = model(cfg.hidden, cfg.layers, 3)
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
        hooks.heartbeat(step)
        if step % 50 == 0 or step == cfg.steps:
            val_loss, val_acc = evaluate(net, x_val, y_val)
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item(),
                      val_loss=val_loss, val_acc=val_acc)
            print(f"step {step} | loss {loss.item():.4f} | val_loss {val_loss:.4f}"
                  f" | val_acc {val_acc:.4f}", flush=True)
        else:
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item())
    val_loss, val_acc = evaluate(net, x_val, y_val)
    print(f"final | val_acc {val_acc:.4f} | val_loss {val_loss:.4f}"
          f" | {time.time() - start:.1f}s", flush=True)
    hooks.result(val_acc=val_acc, val_loss=val_loss, objective=OBJECTIVE, goal=GOAL)


if __name__ == "__main__":
    main()
