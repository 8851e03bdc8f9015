"""A user's own teacher: torchvision's ResNet-18 with a 1-channel 3x3 stem, trained on MNIST.

Written the way a user would: a builder function and a plain training loop, saving a state dict.

    PYTHONPATH=. python examples/mnist_resnet18.py --epochs 3 --out mnist_resnet18.pt
    PYTHONPATH=. python train_agent.py --pipeline --out runs/resnet18 \
        --env-kwargs '{"teacher": "mnist_resnet18.pt", "teacher_arch": "examples.mnist_resnet18:build"}'
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from n2n_gym.data import load_dataset


def build(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 28x28 grey images: a 3x3 stride-1 stem, torchvision's blocks otherwise."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (cosine decay)")
    parser.add_argument("--out", default="mnist_resnet18.pt", help="state dict written here")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_dataset("mnist")  # normalised tensors; the split n2n_gym also uses
    model = build()
    steps = args.epochs * -(-len(data.train_x) // args.batch_size)
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.train_x))
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(x).argmax(1) == y).sum().item()
                for x, y in zip(data.val_x.split(500), data.val_y.split(500), strict=True)
            )
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}, "
            f"val accuracy {correct / len(data.val_x):.4f}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    with torch.no_grad():
        correct = sum(
            (model(x).argmax(1) == y).sum().item()
            for x, y in zip(data.test_x.split(500), data.test_y.split(500), strict=True)
        )
    print(f"test accuracy {correct / len(data.test_x):.4f}")
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
