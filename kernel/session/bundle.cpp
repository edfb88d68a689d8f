#include "session/bundle.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <base/strings.hpp>

namespace ember::session {
namespace {

class BundleSource final : public PayloadSource {
 public:
  explicit BundleSource(wire::SafetensorsSource source) : source_(std::move(source)) {}
  std::uint64_t size() const override { return source_.size(); }
  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const override {
    return source_.read(offset, out);
  }
  bool view(std::uint64_t offset, std::size_t size,
            std::vector<std::span<const std::byte>>& out) const override {
    return source_.view(offset, size, out);
  }

 private:
  wire::SafetensorsSource source_;
};

TaskData decoded_base(const Message& message) {
  TaskData base;
  base.name = message.topic;
  return base;
}

}  // namespace

Result<std::shared_ptr<const PayloadSource>> task_payload(const TaskData& task) {
  auto bundle = wire::make_params_bundle(task);
  if (!bundle) {
    return fail(std::move(bundle.error()));
  }
  return std::shared_ptr<const PayloadSource>(std::make_shared<BundleSource>(std::move(*bundle)));
}

// Streams one message's chunks through a safetensors reader into per-tensor buffers.
class BundleInbox::Sink final : public PayloadSink {
 public:
  Sink(BundleInbox& inbox, const Message& header)
      : inbox_(inbox), header_(header), consumer_(inbox.pool_), reader_(consumer_, inbox.limits_) {}

  Result<void> write(std::uint64_t, std::span<const std::byte> bytes) override { return reader_.feed(bytes); }
  void reset() override {
    reader_.reset();
    consumer_ = wire::CollectingConsumer{inbox_.pool_};
  }
  Result<void> finish() override {
    if (auto done = reader_.finish(); !done) {
      inbox_.store(header_.msg_id, fail(Errc::malformed, "message " + std::to_string(header_.msg_id) + " ('" +
                                                             header_.topic + "'): " + done.error().message));
      return done;
    }
    inbox_.store(header_.msg_id, wire::params_bundle_from(consumer_.take_tensors(), consumer_.take_metadata(),
                                                          decoded_base(header_)));
    return ok();
  }

 private:
  BundleInbox& inbox_;
  Message header_;
  wire::CollectingConsumer consumer_;
  wire::SafetensorsStreamReader reader_;
};

// Streams one message's bytes into an unlinked file; at the end maps it read-only and points the tensors
// into the mapping, which their owners keep alive. The pages are the file's, not this process's heap.
class BundleInbox::SpillSink final : public PayloadSink {
 public:
  SpillSink(BundleInbox& inbox, const Message& header) : inbox_(inbox), header_(header) {
    fd_ = ::open(inbox.spill_dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      error_ = inbox.spill_dir_.string() + ": cannot create a spill file: " + std::strerror(errno);
    }
  }
  ~SpillSink() override {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }

  Result<void> write(std::uint64_t offset, std::span<const std::byte> bytes) override {
    if (!error_.empty()) {
      return fail(Errc::io_error, error_);
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        return fail(Errc::io_error,
                    inbox_.spill_dir_.string() + ": spill write failed: " + std::strerror(errno));
      }
      done += static_cast<std::size_t>(n);
    }
    return ok();
  }
  void reset() override {
    if (fd_ >= 0) {
      (void)::ftruncate(fd_, 0);
    }
  }
  Result<void> finish() override {
    auto decoded = decode();
    inbox_.store(header_.msg_id,
                 decoded ? std::move(decoded)
                         : Result<TaskData>(
                               fail(Errc::malformed, "message " + std::to_string(header_.msg_id) + " ('" +
                                                         header_.topic + "'): " + decoded.error().message)));
    return ok();
  }

 private:
  struct Mapping {
    void* data = MAP_FAILED;
    std::size_t size = 0;
    ~Mapping() {
      if (data != MAP_FAILED) {
        ::munmap(data, size);
      }
    }
  };

  Result<TaskData> decode() {
    const auto size = static_cast<std::size_t>(header_.payload_size);
    auto map = std::make_shared<Mapping>();
    map->size = size;
    map->data = size == 0 ? MAP_FAILED : ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd_, 0);
    if (map->data == MAP_FAILED) {
      return fail(Errc::io_error, std::string("cannot map the spill file: ") + std::strerror(errno));
    }
    std::span<const std::byte> file(static_cast<const std::byte*>(map->data), size);
    auto header = wire::parse_safetensors_header(file, inbox_.limits_);
    if (!header) {
      return fail(std::move(header.error()));
    }
    if (header->file_size() != size) {
      return fail(Errc::malformed, "the bundle is " + std::to_string(size) + " bytes, its header declares " +
                                       std::to_string(header->file_size()));
    }
    std::vector<WireTensor> tensors;
    for (const auto& entry : header->tensors) {
      WireTensor t{entry.name, entry.dtype, entry.shape,
                   file.subspan(static_cast<std::size_t>(header->header_bytes + entry.begin),
                                static_cast<std::size_t>(entry.size())),
                   map};
      tensors.push_back(std::move(t));
    }
    return wire::params_bundle_from(tensors, header->metadata, decoded_base(header_));
  }

  BundleInbox& inbox_;
  Message header_;
  int fd_ = -1;
  std::string error_;
};

SinkFactory BundleInbox::sink_factory() {
  return [this](const Message& header) -> std::unique_ptr<PayloadSink> {
    if (header.op != wire::Op::task_ready && header.op != wire::Op::result_ready) {
      return nullptr;
    }
    if (spill_over_ != 0 && !spill_dir_.empty() && header.payload_size >= spill_over_) {
      return std::make_unique<SpillSink>(*this, header);
    }
    pool_->expect(header.payload_size);
    return std::make_unique<Sink>(*this, header);
  };
}

void BundleInbox::store(std::uint64_t msg_id, Result<TaskData> decoded) {
  std::lock_guard lock(mutex_);
  done_.insert_or_assign(msg_id, std::move(decoded));
}

Result<TaskData> BundleInbox::take(const Message& message) {
  {
    std::lock_guard lock(mutex_);
    if (auto it = done_.find(message.msg_id); it != done_.end()) {
      auto decoded = std::move(it->second);
      done_.erase(it);
      return decoded;
    }
  }
  // Kept in memory (no sink was asked for): decode it now.
  wire::CollectingConsumer consumer(pool_);
  wire::SafetensorsStreamReader reader(consumer, limits_);
  auto fed = reader.feed(message.payload);
  if (fed) {
    fed = reader.finish();
  }
  if (!fed) {
    return fail(Errc::malformed, "message " + std::to_string(message.msg_id) + " ('" + message.topic +
                                     "'): " + fed.error().message);
  }
  return wire::params_bundle_from(consumer.take_tensors(), consumer.take_metadata(), decoded_base(message));
}

std::optional<std::string> layout_mismatch(const TaskData& task, const TaskData& result) {
  if (task.params.empty() || result.params.empty()) {
    return std::nullopt;  // the first round of a job without an initial model; a result of metrics only
  }
  std::map<std::string_view, const WireTensor*> sent;
  for (const auto& t : task.params) {
    sent.emplace(t.name, &t);
  }
  std::vector<std::string> problems;
  std::map<std::string_view, bool> seen;
  for (const auto& t : result.params) {
    auto it = sent.find(t.name);
    if (it == sent.end()) {
      problems.push_back("tensor '" + t.name + "' was not in the task");
      continue;
    }
    seen[t.name] = true;
    if (t.dtype != it->second->dtype) {
      problems.push_back("tensor '" + t.name + "' has dtype " + std::string(to_string(t.dtype)) +
                         ", the task sent " + std::string(to_string(it->second->dtype)));
    } else if (t.shape != it->second->shape) {
      problems.push_back("tensor '" + t.name + "' has shape " + base::shape_text(t.shape) +
                         ", the task sent " + base::shape_text(it->second->shape));
    }
  }
  for (const auto& t : task.params) {
    if (!seen.contains(t.name)) {
      problems.push_back("tensor '" + t.name + "' is missing");
    }
  }
  if (problems.empty()) {
    return std::nullopt;
  }
  std::string text;
  for (std::size_t i = 0; i < problems.size() && i < 5; ++i) {
    text += (i == 0 ? "" : "; ") + problems[i];
  }
  if (problems.size() > 5) {
    text += "; and " + std::to_string(problems.size() - 5) + " more";
  }
  return text;
}

}  // namespace ember::session
