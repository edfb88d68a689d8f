// The hello-fedavg example trainer: a small LibTorch network trained on synthetic data through the Client
// API.
//
// Every site draws points around the same four class centres, but each site sees mostly two of the four
// classes (non-IID), so a site alone learns a model that is wrong on half the classes. Federated averaging
// across sites gives a model that is right on all four: the validation set (the same balanced set on every
// site) shows it round by round.
//
// Usage (the job launches it; EMBER_BOOTSTRAP names the bootstrap file):
//   ember-hello-trainer [--epochs N] [--samples N] [--lr X]

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <ember/client.hpp>

namespace {

constexpr int features = 16;
constexpr int classes = 4;

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(features, 32));
    fc2 = register_module("fc2", torch::nn::Linear(32, classes));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2->forward(torch::relu(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

struct Data {
  torch::Tensor x, y;
};

// The class centres are the same everywhere (seed 7); what differs per site is which classes it mostly sees.
torch::Tensor centres() {
  torch::manual_seed(7);
  return torch::randn({classes, features}) * 0.45;
}

Data make_data(int samples, int site_index, std::uint64_t seed) {
  auto c = centres();
  torch::manual_seed(seed);
  // 95 % of a site's samples come from its two "home" classes, 5 % from the other two.
  auto home = torch::tensor({site_index % 2 == 0 ? 0 : 2, site_index % 2 == 0 ? 1 : 3}, torch::kLong);
  auto rare = torch::tensor({site_index % 2 == 0 ? 2 : 0, site_index % 2 == 0 ? 3 : 1}, torch::kLong);
  auto pick_home = torch::rand({samples}) < 0.95;
  auto which = torch::randint(0, 2, {samples}, torch::kLong);
  auto y = torch::where(pick_home, home.index_select(0, which), rare.index_select(0, which));
  auto x = c.index_select(0, y) + torch::randn({samples, features});
  return {x, y};
}

Data validation_data() {
  auto c = centres();
  torch::manual_seed(1234);
  auto y = torch::arange(0, 2000, torch::kLong) % classes;
  auto x = c.index_select(0, y) + torch::randn({2000, features});
  return {x, y};
}

std::pair<double, double> evaluate(Net& net, const Data& data) {
  torch::NoGradGuard no_grad;
  auto logits = net.forward(data.x);
  auto loss = torch::nn::functional::cross_entropy(logits, data.y).item<double>();
  auto accuracy = logits.argmax(1).eq(data.y).to(torch::kFloat).mean().item<double>();
  return {accuracy, loss};
}

int site_number(const std::string& site) {
  auto dash = site.rfind('-');
  return dash == std::string::npos ? 1 : std::atoi(site.c_str() + dash + 1);
}

int fail(const std::string& what, const ember::Error& error) {
  std::fprintf(stderr, "hello-trainer: %s: %s\n", what.c_str(), error.message.c_str());
  ember::client::shutdown();
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 1;
  int samples = 1000;
  double lr = 0.01;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--epochs") {
      epochs = std::atoi(argv[i + 1]);
    } else if (flag == "--samples") {
      samples = std::atoi(argv[i + 1]);
    } else if (flag == "--lr") {
      lr = std::atof(argv[i + 1]);
    } else {
      std::fprintf(stderr, "hello-trainer: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (auto ready = ember::client::init(); !ready) {
    return fail("init", ready.error());
  }
  torch::set_num_threads(1);  // sites share the machine's cores
  const auto site = ember::client::site_name();
  const int index = site_number(site);
  const Data train = make_data(samples, index, 100 + static_cast<std::uint64_t>(index));
  const Data valid = validation_data();
  torch::manual_seed(0);  // every site starts from the same weights when the job sends none
  Net net;

  while (true) {
    auto next = ember::client::receive();
    if (!next) {
      return fail("receive", next.error());
    }
    if (!*next) {
      break;  // the job ended
    }
    auto& model = **next;
    {
      torch::NoGradGuard no_grad;
      for (auto& p : net.named_parameters()) {
        const auto* wire = model.find(p.key());
        if (wire == nullptr) {
          continue;  // first round without an initial model: keep the seeded weights
        }
        auto native = ember::client::to_native(*wire, "torch");
        if (!native) {
          return fail("tensor " + p.key(), native.error());
        }
        p.value().copy_(*std::static_pointer_cast<torch::Tensor>(native->object));
      }
    }
    auto [accuracy, loss] = evaluate(net, valid);
    ember::client::FLModel result;
    result.metrics["val_accuracy"] = accuracy;
    result.metrics["val_loss"] = loss;
    if (ember::client::is_train()) {
      torch::optim::SGD optimizer(net.parameters(), torch::optim::SGDOptions(lr).momentum(0.9));
      double last = 0;
      for (int epoch = 0; epoch < epochs && !ember::client::abort_requested(); ++epoch) {
        auto order = torch::randperm(samples, torch::kLong);
        double sum = 0;
        int batches = 0;
        for (int start = 0; start < samples; start += 32) {
          auto idx = order.slice(0, start, std::min(start + 32, samples));
          optimizer.zero_grad();
          auto batch_loss = torch::nn::functional::cross_entropy(net.forward(train.x.index_select(0, idx)),
                                                                 train.y.index_select(0, idx));
          batch_loss.backward();
          optimizer.step();
          sum += batch_loss.item<double>();
          ++batches;
        }
        last = sum / batches;
        ember::client::log(
            "train_loss", last,
            model.current_round * static_cast<std::uint64_t>(epochs) + static_cast<std::uint64_t>(epoch));
      }
      result.metrics["train_loss"] = last;
      result.metrics["num_samples"] = samples;
      for (auto& p : net.named_parameters()) {
        auto wire = ember::client::to_wire(
            ember::NativeTensor{"torch", std::make_shared<torch::Tensor>(p.value().detach().clone())},
            p.key());
        if (!wire) {
          return fail("tensor " + p.key(), wire.error());
        }
        result.params.push_back(std::move(*wire));
      }
    } else {
      result.metrics["num_samples"] = static_cast<double>(valid.y.size(0));
    }
    if (auto sent = ember::client::send(result); !sent) {
      return fail("send", sent.error());
    }
  }
  ember::client::shutdown();
  return 0;
}
