"""Train a tiny character-level language model on a short text (written by mlsm's builtin agent)."""

# The model reads a fixed window of previous characters and predicts the next one (an MLP over
# character embeddings). The text ships with mlsm; the split is fixed, so runs are comparable.
# The defaults are deliberately modest; mlsm tunes the parameters declared in `hooks.params`.

import math
import os
import time
from importlib import resources

import torch
from torch import nn

from mlsm import hooks

torch.set_num_threads(1)

OBJECTIVE = "val_loss"  # the metric mlsm optimises: the builtin agent sets it from PLAN.md
GOAL = "minimize"

cfg = hooks.params(
    lr=hooks.loguniform(1e-4, 3e-2, default=3e-4),
    context=hooks.choice([4, 8, 12, 16], default=4),
    embed=hooks.choice([8, 16, 32], default=8),
    hidden=hooks.choice([64, 128, 256], default=64),
    batch_size=hooks.choice([64, 128, 256], default=64),
    steps=800,
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


def load_text() -> str:
    return (resources.files("mlsm.handlers.builtin") / "data" / "harbour.txt").read_text("utf-8")


def windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (previous `context` characters, next character) pair of the sequence."""
    x = ids.unfold(0, context, 1)[:-1]
    return x, ids[context:]


class CharMLP(nn.Module):
    def __init__(self, vocab: int, context: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.net = nn.Sequential(nn.Linear(context * embed, hidden), nn.Tanh(),
                                 nn.Linear(hidden, vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(self.embed(x).flatten(1))
        return logits


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(net(x), y).item()


def main() -> None:
    torch.manual_seed(cfg.seed)
    text = load_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    split = int(len(ids) * 0.9)
    x_train, y_train = windows(ids[:split], cfg.context)
    x_val, y_val = windows(ids[split:], cfg.context)
    net = CharMLP(len(vocab), cfg.context, cfg.embed, cfg.hidden)
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
        if step % 100 == 0 or step == cfg.steps:
            val_loss = evaluate(net, x_val, y_val)
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item(), val_loss=val_loss,
                      val_bpc=val_loss / math.log(2))
            print(f"step {step} | loss {loss.item():.4f} | val_loss {val_loss:.4f}", flush=True)
        else:
            hooks.log(step=step, total_steps=cfg.steps, loss=loss.item())
    val_loss = evaluate(net, x_val, y_val)
    val_bpc = val_loss / math.log(2)
    print(f"final | val_loss {val_loss:.4f} | val_bpc {val_bpc:.3f}"
          f" | {time.time() - start:.1f}s", flush=True)
    hooks.result(val_loss=val_loss, val_bpc=val_bpc, val_ppl=math.exp(val_loss),
                 objective=OBJECTIVE, goal=GOAL)


if __name__ == "__main__":
    main()
