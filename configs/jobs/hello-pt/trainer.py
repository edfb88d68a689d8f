"""hello-pt: a small PyTorch CNN trained with FedAvg through ember's Python Client API.

Every site draws 8x8 images of four patterns (a horizontal bar, a vertical bar, a diagonal, a ring)
with noise, but each site sees mostly two of the four (non-IID), so a site alone learns a model
that is wrong on half the classes; federated averaging gives one that is right on all four. The
validation set is the same balanced set on every site, so its accuracy shows the global model
improving round by round.

The job launches it (ember simulate configs/jobs/hello-pt --clients 2); the hyper-parameters come
from the job's [trainer_config] table. It is written as a FLARE Client API script: only the import
line differs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import ember.client as flare

CLASSES = 4
SIZE = 8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def patterns():
    p = torch.zeros(CLASSES, SIZE, SIZE)
    p[0, 3:5, :] = 1.0                                   # horizontal bar
    p[1, :, 3:5] = 1.0                                   # vertical bar
    p[2] = torch.eye(SIZE) + torch.eye(SIZE).flip(0)     # a cross of diagonals
    p[3, 1, 1:7] = p[3, 6, 1:7] = p[3, 1:7, 1] = p[3, 1:7, 6] = 1.0   # ring
    return p


def make_data(samples, site_index, seed, noise):
    gen = torch.Generator().manual_seed(seed)
    home = torch.tensor([0, 1] if site_index % 2 else [2, 3])
    rare = torch.tensor([2, 3] if site_index % 2 else [0, 1])
    pick_home = torch.rand(samples, generator=gen) < 0.95
    which = torch.randint(0, 2, (samples,), generator=gen)
    y = torch.where(pick_home, home[which], rare[which])
    x = patterns()[y] + noise * torch.randn(samples, SIZE, SIZE, generator=gen)
    return x.unsqueeze(1), y


def validation_data(noise):
    gen = torch.Generator().manual_seed(1234)
    y = torch.arange(2000) % CLASSES
    x = patterns()[y] + noise * torch.randn(2000, SIZE, SIZE, generator=gen)
    return x.unsqueeze(1), y


def evaluate(net, data):
    x, y = data
    with torch.no_grad():
        logits = net(x)
        loss = F.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    return accuracy, loss


def main():
    flare.init()
    config = flare.get_config()
    epochs = int(config.get("epochs", 1))
    samples = int(config.get("samples", 1000))
    lr = float(config.get("lr", 0.01))
    noise = float(config.get("noise", 1.0))
    torch.set_num_threads(1)  # sites share the machine's cores
    site = flare.get_site_name()
    index = int(site.rsplit("-", 1)[-1]) if site[-1:].isdigit() else 1
    train_x, train_y = make_data(samples, index, 100 + index, noise)
    valid = validation_data(noise)
    torch.manual_seed(0)  # every site starts from the same weights when the job sends none
    net = Net()

    while flare.is_running():
        input_model = flare.receive()
        if input_model.params:
            net.load_state_dict(input_model.params)
        accuracy, loss = evaluate(net, valid)
        metrics = {"val_accuracy": accuracy, "val_loss": loss}
        if flare.is_evaluate():
            metrics["num_samples"] = len(valid[1])
            flare.send(flare.FLModel(metrics=metrics))
            continue
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        last = 0.0
        for epoch in range(epochs):
            order = torch.randperm(samples)
            total, batches = 0.0, 0
            for start in range(0, samples, 32):
                idx = order[start:start + 32]
                optimizer.zero_grad()
                batch_loss = F.cross_entropy(net(train_x[idx]), train_y[idx])
                batch_loss.backward()
                optimizer.step()
                total += batch_loss.item()
                batches += 1
            last = total / batches
            flare.log("train_loss", last, flare.AnalyticsDataType.SCALAR,
                      global_step=input_model.current_round * epochs + epoch)
        metrics.update(train_loss=last, num_samples=samples)
        flare.send(flare.FLModel(params=net.state_dict(), metrics=metrics,
                                 params_type=flare.ParamsType.FULL))


if __name__ == "__main__":
    main()
