#pragma once
// Models on disk, in safetensors: the global model after each round (<dir>/round-<r>.safetensors), the final
// model, and the initial one. Files are replaced atomically, so a crash leaves either the old file or the new
// one, never half of one; a resumed run takes the newest checkpoint that reads back whole.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ember/result.hpp>
#include <ember/task.hpp>

namespace ember::fedavg {

/// A model read from a safetensors file: its tensors (each owning its bytes) and the file's metadata.
struct StoredModel {
  std::vector<WireTensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads a safetensors file through the wire codec's checks. Errors name the file.
Result<StoredModel> read_model(const std::filesystem::path& file);

/// Writes `bundle` (params and fields, as wire::make_params_bundle lays them out, with the data's CRC-32C) to
/// `file` atomically: a temporary file beside it, fsync, rename over `file`, fsync of the folder. Creates
/// the folder.
/// Errc::io_error naming the file.
Result<void> write_bundle(const std::filesystem::path& file, const TaskData& bundle);

/// `<dir>/round-<round>.safetensors`.
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, std::uint64_t round);

/// The rounds of the checkpoint files in `dir`, highest first (none if `dir` does not exist).
Result<std::vector<std::uint64_t>> list_checkpoints(const std::filesystem::path& dir);

/// A checkpoint read back: the model and the fields it was saved with (round, metrics, meta).
struct Checkpoint {
  std::filesystem::path file;
  TaskData data;
};

/// The newest checkpoint in `dir` that reads back whole, whose data matches its checksum and that says the
/// round its name says. For each file that does not, `skipped` gets why (naming the file) and the next older
/// one is tried. nullopt when none is good.
Result<std::optional<Checkpoint>> newest_checkpoint(const std::filesystem::path& dir,
                                                    const std::function<void(const std::string&)>& skipped);

/// Removes the checkpoints of rounds below `first_kept`, and temporary files a crashed write left behind.
/// Returns a message per file that could not be removed.
std::vector<std::string> prune_checkpoints(const std::filesystem::path& dir, std::uint64_t first_kept);

}  // namespace ember::fedavg
