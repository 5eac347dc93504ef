"""Fit a smooth function of five inputs with a small MLP (written by mlsm's builtin agent)."""

# The data is generated with a fixed seed, so every run sees the same train and validation sets.
# The defaults are deliberately modest; mlsm tunes the parameters declared in `hooks.params`.

import os
import time

import torch
from torch import nn

from mlsm import hooks

torch.set_num_threads(1)

OBJECTIVE = "val_loss"  # the metric mlsm optimises: the builtin agent sets it from PLAN.md
GOAL = "minimize"

cfg = hooks.params(
    lr=hooks.loguniform(1e-4, 1e-1, default=3e-4),
    hidden=hooks.choice([16, 32, 64, 128], default=16),
    layers=hooks.intrange(1, 3, default=1),
    weight_decay=hooks.loguniform(1e-6, 1e-2, default=1e-4),
    batch_size=hooks.choice([32, 64, 128], default=64),
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


def target(x: torch.Tensor) -> torch.Tensor:
    """The function to learn: smooth, nonlinear, with an interaction term."""
    return (torch.sin(2.0 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3]
            + 0.3 * torch.cos(3.0 * x[:, 4]))


def dataset(n: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 5, generator=gen) * 4.0 - 2.0
    y = target(x) + noise * torch.randn(n, generator=gen)
    return x, y.unsqueeze(1)


def model(hidden: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = []
    width = 5
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, 1))


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(net(x), y).item()


def main() -> None:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(4321)  # the data never changes between runs
    x_train, y_train = dataset(2000, 0.1, gen)
    x_val, y_val = dataset(500, 0.1, gen)
    net = model(cfg.hidden, cfg.layers)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = resume(net, opt)
    start = time.time()
    for step in range(first + 1, cfg.steps + 1):
        if hooks.stop_requested():  # STOP, --run-timeout, a preemption: save, then end
            save(step - 1, net, opt)
            raise SystemExit(143)  # 128 + SIGTERM: ended as the signal asked
        idx = torch.randint(0, len(x_train), (cfg.batch_size,))
        loss = nn.functional.mse_loss(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        if step % SAVE_EVERY == 0:
            save(step, net, opt)
        hooks.heartbeat(step)
        if step % 50 == 0 or step == cfg.steps:
            val_loss = evaluate(net, x_val, y_val)
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item(), val_loss=val_loss)
            print(f"step {step} | loss {loss.item():.4f} | val_loss {val_loss:.4f}", flush=True)
        else:
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item())
    val_loss = evaluate(net, x_val, y_val)
    val_rmse = val_loss ** 0.5
    print(f"final | val_loss {val_loss:.4f} | val_rmse {val_rmse:.4f}"
          f" | {time.time() - start:.1f}s", flush=True)
    hooks.result(val_loss=val_loss, val_mse=val_loss, val_rmse=val_rmse, objective=OBJECTIVE,
                 goal=GOAL)


if __name__ == "__main__":
    main()
