#include "plugin_loader.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <system_error>

#include <boost/dll/shared_library.hpp>

namespace ember::kernel {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t max_text = 4096;
constexpr std::uint32_t max_components = 256;
constexpr std::uint32_t max_options = 256;
// A generous bound on the section: 256 components of 256 options of a few short texts fit many times over.
constexpr std::size_t max_section_bytes = 4u << 20;
constexpr std::size_t max_elf_sections = 65536;
constexpr const char* entry_symbol = "ember_plugin";

std::string where(const fs::path& origin) {
  return origin.string() + ": ";
}

tl::unexpected<Error> invalid(const fs::path& origin, const std::string& what) {
  return fail(Errc::invalid_descriptor, where(origin) + "invalid descriptor: " + what);
}

// A text as the plugin wrote it: absent (a null pointer), or its bytes.
using Text = std::optional<std::string>;

// The description of a plugin before it is validated: what the section's blob or the runtime descriptor
// holds, in one shape, so both go through the same checks.
struct RawOption {
  Text name, default_value, doc, choices, minimum, maximum;
  std::uint32_t type = 0;
  std::uint32_t refers_to = 0;
};
struct RawComponent {
  std::uint32_t kind = 0;
  Text name, description;
  std::vector<RawOption> options;
  ComponentFactory factory = nullptr;
};
struct RawPlugin {
  Text name, version, description, license;
  std::vector<RawComponent> components;
};

bool valid_name(std::string_view name, bool allow_dash) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [allow_dash](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || (allow_dash && c == '-');
  });
}

bool valid_kind(std::uint32_t k) {
  return k >= static_cast<std::uint32_t>(Kind::pipe) && k <= static_cast<std::uint32_t>(Kind::executor);
}

bool valid_option_type(std::uint32_t t) {
  return t >= static_cast<std::uint32_t>(OptionType::string) &&
         t <= static_cast<std::uint32_t>(OptionType::string_list);
}

const char* c_str(const Text& text) {
  return text ? text->c_str() : nullptr;
}

Result<OptionInfo> check_option(const RawOption& raw, const fs::path& origin, const std::string& component) {
  if (!raw.name || !valid_name(*raw.name, false)) {
    return invalid(origin, "component '" + component + "' has an option with a missing or invalid name");
  }
  const std::string& name = *raw.name;
  std::string option = "option '" + component + "." + name + "'";
  if (name == "type") {
    return invalid(origin, "component '" + component + "' declares option 'type', which is reserved");
  }
  if (!valid_option_type(raw.type)) {
    return invalid(origin, option + " has unknown type " + std::to_string(raw.type));
  }
  auto type = static_cast<OptionType>(raw.type);
  if (raw.refers_to != 0 &&
      (!valid_kind(raw.refers_to) || (type != OptionType::string && type != OptionType::string_list))) {
    return invalid(origin, option + " refers to kind " + std::to_string(raw.refers_to) +
                               ", which is not a kind or not on a string option");
  }
  auto constraints = parse_constraints(type, c_str(raw.choices), c_str(raw.minimum), c_str(raw.maximum));
  if (!constraints) {
    return invalid(origin, option + ": " + constraints.error().message);
  }
  OptionInfo info{name,
                  type,
                  std::nullopt,
                  raw.doc.value_or(""),
                  raw.choices,
                  raw.minimum,
                  raw.maximum,
                  static_cast<Kind>(raw.refers_to),
                  std::move(*constraints)};
  if (raw.default_value) {
    auto parsed = option_from_text(*raw.default_value, type, Substitutions{});
    if (!parsed) {
      return invalid(origin, option + ": " + parsed.error().message);
    }
    // Defaults that use substitutions are checked against choices when they are resolved.
    if (raw.default_value->find('{') == std::string::npos) {
      if (auto fits = check_constraints(*parsed, info.constraints); !fits) {
        return invalid(origin, option + ": default " + fits.error().message);
      }
    }
    info.default_text = *raw.default_value;
  }
  return info;
}

Result<ComponentInfo> check_component(const RawComponent& raw, const fs::path& origin) {
  if (!valid_kind(raw.kind)) {
    return invalid(origin, "a component has unknown kind " + std::to_string(raw.kind));
  }
  auto kind = static_cast<Kind>(raw.kind);
  if (!raw.name || !valid_name(*raw.name, true)) {
    return invalid(origin, "a " + std::string(to_string(kind)) +
                               " component has a missing or invalid name (want [a-z0-9_-]{1,64})");
  }
  ComponentInfo info;
  info.kind = kind;
  info.name = *raw.name;
  info.type = std::string(to_string(kind)) + "." + info.name;
  info.description = raw.description.value_or("");
  info.factory = raw.factory;
  if (raw.options.size() > max_options) {
    return invalid(origin, "component '" + info.type + "' has a bad option table");
  }
  std::set<std::string, std::less<>> seen;
  for (const auto& raw_option : raw.options) {
    auto option = check_option(raw_option, origin, info.type);
    if (!option) {
      return fail(std::move(option.error()));
    }
    if (!seen.insert(option->name).second) {
      return invalid(origin, "component '" + info.type + "' declares option '" + option->name + "' twice");
    }
    info.options.push_back(std::move(*option));
  }
  return info;
}

// The checks after ABI version, size and build id: names, versions, components and their schemas.
Result<PluginInfo> check_plugin(const RawPlugin& raw, const fs::path& origin) {
  PluginInfo info;
  info.path = origin;
  if (!raw.name || !valid_name(*raw.name, true)) {
    return invalid(origin, "missing or invalid plugin name (want [a-z0-9_-]{1,64})");
  }
  info.name = *raw.name;
  if (!raw.version || raw.version->empty()) {
    return invalid(origin, "plugin '" + info.name + "' has no version");
  }
  info.version = *raw.version;
  info.description = raw.description.value_or("");
  info.license = raw.license.value_or("");
  if (raw.components.empty() || raw.components.size() > max_components) {
    return invalid(origin, "plugin '" + info.name + "' must provide between 1 and " +
                               std::to_string(max_components) + " components, has " +
                               std::to_string(raw.components.size()));
  }
  std::set<std::string, std::less<>> types;
  for (const auto& raw_component : raw.components) {
    auto component = check_component(raw_component, origin);
    if (!component) {
      return fail(std::move(component.error()));
    }
    if (!types.insert(component->type).second) {
      return invalid(origin, "plugin '" + info.name + "' provides '" + component->type + "' twice");
    }
    info.components.push_back(std::move(*component));
  }
  return info;
}

// Reads the blob of a section; every read is bounded by what is left of it.
class BlobReader {
 public:
  explicit BlobReader(std::span<const std::byte> bytes) : bytes_(bytes) {}

  bool u8(std::uint8_t& out) {
    if (bytes_.size() - at_ < 1) {
      return false;
    }
    out = static_cast<std::uint8_t>(bytes_[at_++]);
    return true;
  }
  bool u32(std::uint32_t& out) {
    if (bytes_.size() - at_ < 4) {
      return false;
    }
    out = 0;
    for (int i = 0; i < 4; ++i) {
      out |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(bytes_[at_++])) << (8 * i);
    }
    return true;
  }
  bool text(Text& out) {
    std::uint8_t present = 0;
    std::uint32_t length = 0;
    if (!u8(present) || present > 1 || !u32(length) || length > max_text || bytes_.size() - at_ < length) {
      return false;
    }
    const auto* begin = reinterpret_cast<const char*>(bytes_.data() + at_);
    if (std::find(begin, begin + length, '\0') != begin + length) {
      return false;
    }
    out = present != 0 ? Text(std::string(begin, length)) : std::nullopt;
    at_ += length;
    return true;
  }
  std::size_t left() const { return bytes_.size() - at_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
};

std::optional<RawPlugin> read_blob(std::span<const std::byte> blob) {
  BlobReader in(blob);
  RawPlugin raw;
  std::uint32_t components = 0;
  if (!in.text(raw.name) || !in.text(raw.version) || !in.text(raw.description) || !in.text(raw.license) ||
      !in.u32(components) || components > max_components) {
    return std::nullopt;
  }
  for (std::uint32_t c = 0; c < components; ++c) {
    RawComponent& component = raw.components.emplace_back();
    std::uint32_t options = 0;
    if (!in.u32(component.kind) || !in.text(component.name) || !in.text(component.description) ||
        !in.u32(options) || options > max_options) {
      return std::nullopt;
    }
    for (std::uint32_t o = 0; o < options; ++o) {
      RawOption& option = component.options.emplace_back();
      if (!in.text(option.name) || !in.u32(option.type) || !in.text(option.default_value) ||
          !in.text(option.doc) || !in.text(option.choices) || !in.text(option.minimum) ||
          !in.text(option.maximum) || !in.u32(option.refers_to)) {
        return std::nullopt;
      }
    }
  }
  if (in.left() != 0) {
    return std::nullopt;
  }
  return raw;
}

// Reads a C string the plugin supplied, bounded so a missing terminator cannot run away. An over-long text
// is an error, a null pointer is an absent text.
Result<Text> bounded(const char* text, const fs::path& origin, const char* what) {
  if (text == nullptr) {
    return Text{};
  }
  std::size_t length = strnlen(text, max_text + 1);
  if (length > max_text) {
    return invalid(origin, std::string(what) + " is longer than " + std::to_string(max_text) + " bytes");
  }
  return Text(std::string(text, length));
}

Result<RawPlugin> raw_of(const PluginDescriptor& d, const fs::path& origin) {
  RawPlugin raw;
  for (auto [text, slot] : {std::pair{d.name, &raw.name}, std::pair{d.version, &raw.version},
                            std::pair{d.description, &raw.description}, std::pair{d.license, &raw.license}}) {
    auto read = bounded(text, origin, "a plugin text");
    if (!read) {
      return fail(std::move(read.error()));
    }
    *slot = std::move(*read);
  }
  if (d.component_count > max_components || (d.component_count > 0 && d.components == nullptr)) {
    return invalid(origin, "the component table is bad (" + std::to_string(d.component_count) + " entries)");
  }
  for (std::uint32_t c = 0; c < d.component_count; ++c) {
    const ComponentDescriptor& desc = d.components[c];
    RawComponent& component = raw.components.emplace_back();
    component.kind = static_cast<std::uint32_t>(desc.kind);
    component.factory = desc.factory;
    auto name = bounded(desc.name, origin, "a component name");
    auto description = bounded(desc.description, origin, "a component description");
    if (!name || !description) {
      return fail(std::move(!name ? name.error() : description.error()));
    }
    component.name = std::move(*name);
    component.description = std::move(*description);
    if (desc.factory == nullptr) {
      return invalid(origin, "component '" + component.name.value_or("?") + "' has no factory");
    }
    if (desc.option_count > max_options || (desc.option_count > 0 && desc.options == nullptr)) {
      return invalid(origin, "component '" + component.name.value_or("?") + "' has a bad option table");
    }
    for (std::uint32_t o = 0; o < desc.option_count; ++o) {
      const OptionSpec& spec = desc.options[o];
      RawOption& option = component.options.emplace_back();
      option.type = static_cast<std::uint32_t>(spec.type);
      option.refers_to = static_cast<std::uint32_t>(spec.refers_to);
      for (auto [text, slot] :
           {std::pair{spec.name, &option.name}, std::pair{spec.default_value, &option.default_value},
            std::pair{spec.doc, &option.doc}, std::pair{spec.choices, &option.choices},
            std::pair{spec.minimum, &option.minimum}, std::pair{spec.maximum, &option.maximum}}) {
        auto read = bounded(text, origin, "an option text");
        if (!read) {
          return fail(std::move(read.error()));
        }
        *slot = std::move(*read);
      }
    }
  }
  return raw;
}

// The first way two descriptions of one plugin differ, or nothing.
std::optional<std::string> first_difference(const PluginInfo& a, const PluginInfo& b) {
  auto differs = [](const std::string& what, const std::string& x, const std::string& y) {
    return what + " is '" + x + "' in the section, '" + y + "' in the entry's descriptor";
  };
  auto text = [](const std::optional<std::string>& t) { return t ? "\"" + *t + "\"" : std::string("none"); };
  if (a.name != b.name || a.version != b.version || a.description != b.description ||
      a.license != b.license) {
    return differs("the plugin's name, version, description or license", a.name + " " + a.version,
                   b.name + " " + b.version);
  }
  if (a.components.size() != b.components.size()) {
    return differs("the number of components", std::to_string(a.components.size()),
                   std::to_string(b.components.size()));
  }
  for (std::size_t c = 0; c < a.components.size(); ++c) {
    const auto& x = a.components[c];
    const auto& y = b.components[c];
    if (x.type != y.type || x.description != y.description || x.options.size() != y.options.size()) {
      return differs("component " + std::to_string(c), x.type, y.type);
    }
    for (std::size_t o = 0; o < x.options.size(); ++o) {
      const auto& p = x.options[o];
      const auto& q = y.options[o];
      std::string option = "option '" + x.type + "." + p.name + "'";
      if (p.name != q.name || p.type != q.type || p.refers_to != q.refers_to || p.doc != q.doc) {
        return differs(option + " (name, type, doc or reference)", p.name, q.name);
      }
      if (p.default_text != q.default_text || p.choices_text != q.choices_text ||
          p.minimum_text != q.minimum_text || p.maximum_text != q.maximum_text) {
        return differs(option + " (default, choices or range)",
                       text(p.default_text) + " " + text(p.choices_text) + " " + text(p.minimum_text) + " " +
                           text(p.maximum_text),
                       text(q.default_text) + " " + text(q.choices_text) + " " + text(q.minimum_text) + " " +
                           text(q.maximum_text));
      }
    }
  }
  return std::nullopt;
}

// Copies the factories of a checked runtime description into the section's, which it agrees with.
Result<void> adopt(PluginInfo& from_section, const PluginInfo& from_entry) {
  if (auto difference = first_difference(from_section, from_entry)) {
    return invalid(from_section.path,
                   "the descriptor its entry returns disagrees with its '" EMBER_PLUGIN_SECTION
                   "' section: " +
                       *difference);
  }
  for (std::size_t c = 0; c < from_section.components.size(); ++c) {
    from_section.components[c].factory = from_entry.components[c].factory;
  }
  return ok();
}

// Closes a file descriptor and an Elf handle when it goes out of scope.
struct ElfFile {
  int fd = -1;
  Elf* elf = nullptr;
  ~ElfFile() {
    if (elf != nullptr) {
      elf_end(elf);
    }
    if (fd >= 0) {
      ::close(fd);
    }
  }
};

std::string elf_error() {
  const char* message = elf_errmsg(-1);
  return message != nullptr ? message : "unknown libelf error";
}

// The bytes of the ".ember_plugin" section of an ELF file, read with libelf (every read bounded by the
// file's size) without mapping the file for execution.
Result<std::vector<std::byte>> read_section(const fs::path& file) {
  static std::once_flag elf_init;
  std::call_once(elf_init, [] { elf_version(EV_CURRENT); });
  ElfFile f;
  // O_NONBLOCK: a FIFO named like a plugin must not hang the scan; it is refused below as not a file.
  f.fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) {
    int error = errno;
    if (error == ENOENT) {
      return fail(Errc::not_found, where(file) + "plugin file not found");
    }
    return fail(Errc::open_failed, where(file) + "cannot open: " + std::strerror(error));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail(Errc::open_failed, where(file) + "cannot open: not a regular file");
  }
  f.elf = elf_begin(f.fd, ELF_C_READ, nullptr);
  if (f.elf == nullptr || elf_kind(f.elf) != ELF_K_ELF) {
    return fail(Errc::open_failed, where(file) + "cannot open: not an ELF file");
  }
  std::size_t names = 0;
  std::size_t sections = 0;
  if (elf_getshdrstrndx(f.elf, &names) != 0 || elf_getshdrnum(f.elf, &sections) != 0) {
    return fail(Errc::open_failed, where(file) + "cannot open: bad ELF section headers: " + elf_error());
  }
  if (sections > max_elf_sections) {
    return fail(Errc::open_failed,
                where(file) + "cannot open: " + std::to_string(sections) + " ELF sections");
  }
  Elf_Scn* found = nullptr;
  GElf_Shdr header{};
  for (Elf_Scn* scn = elf_nextscn(f.elf, nullptr); scn != nullptr; scn = elf_nextscn(f.elf, scn)) {
    GElf_Shdr h{};
    if (gelf_getshdr(scn, &h) == nullptr) {
      return fail(Errc::open_failed, where(file) + "cannot open: bad ELF section header: " + elf_error());
    }
    const char* name = elf_strptr(f.elf, names, h.sh_name);
    if (name == nullptr || std::strcmp(name, EMBER_PLUGIN_SECTION) != 0) {
      continue;
    }
    if (found != nullptr) {
      return invalid(file, "two '" EMBER_PLUGIN_SECTION "' sections");
    }
    found = scn;
    header = h;
  }
  if (found == nullptr) {
    return fail(Errc::not_a_plugin, where(file) + "not an ember plugin: no '" EMBER_PLUGIN_SECTION
                                                  "' section (write EMBER_PLUGIN(...) in one source file)");
  }
  if (header.sh_type != SHT_PROGBITS || header.sh_size > max_section_bytes) {
    return invalid(file, "the '" EMBER_PLUGIN_SECTION "' section is not data of at most " +
                             std::to_string(max_section_bytes) + " bytes");
  }
  Elf_Data* data = elf_getdata(found, nullptr);
  if (data == nullptr || (data->d_size > 0 && data->d_buf == nullptr) || data->d_size != header.sh_size) {
    return invalid(file, "cannot read the '" EMBER_PLUGIN_SECTION "' section: " + elf_error());
  }
  const auto* begin = static_cast<const std::byte*>(data->d_buf);
  return std::vector<std::byte>(begin, begin + data->d_size);
}

}  // namespace

const OptionInfo* ComponentInfo::find_option(std::string_view option) const {
  for (const auto& o : options) {
    if (o.name == option) {
      return &o;
    }
  }
  return nullptr;
}

std::vector<fs::path> discover_plugins(const std::vector<fs::path>& roots, std::vector<Refusal>& refusals) {
  std::vector<fs::path> found;
  std::set<fs::path> seen;
  for (const auto& root : roots) {
    std::error_code ec;
    if (!fs::exists(root, ec)) {
      continue;
    }
    std::vector<fs::path> here;
    if (fs::is_regular_file(root, ec)) {
      here.push_back(root);
    } else {
      fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
      if (ec) {
        refusals.push_back(
            {root, Error{Errc::io_error, root.string() + ": cannot read plugin folder: " + ec.message()}});
        continue;
      }
      std::size_t examined = 0;
      for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) {
          break;
        }
        if (++examined > max_scan_entries) {
          refusals.push_back(
              {root, Error{Errc::io_error, root.string() + ": plugin scan cut after " +
                                               std::to_string(max_scan_entries) +
                                               " entries: this is not a plugin folder (give the folder that "
                                               "holds the .so files, not a tree above it)"}});
          break;
        }
        const auto& path = it->path();
        if (it->is_directory(ec)) {
          // Meson's private object folders and hidden folders hold no plugins; deeper folders are foreign.
          std::string name = path.filename().string();
          if (path.extension() == ".p" || name.starts_with('.') || it.depth() + 1 > max_scan_depth) {
            it.disable_recursion_pending();
          }
          continue;
        }
        if (path.extension() == ".so" && it->is_regular_file(ec)) {
          here.push_back(path);
        }
      }
    }
    std::sort(here.begin(), here.end());
    for (auto& file : here) {
      auto canonical = fs::weakly_canonical(file, ec);
      if (seen.insert(ec ? file : canonical).second) {
        found.push_back(std::move(file));
      }
    }
  }
  return found;
}

Result<PluginInfo> parse_plugin_info(std::span<const std::byte> section, const fs::path& origin) {
  PluginInfoHeader header{};
  // The contract's order: magic, ABI version, then size, then build id, before anything else is read.
  constexpr std::size_t version_end = offsetof(PluginInfoHeader, descriptor_size);
  if (section.size() < version_end + sizeof header.descriptor_size) {
    return invalid(origin, "the '" EMBER_PLUGIN_SECTION "' section is " + std::to_string(section.size()) +
                               " bytes, too short for a header");
  }
  std::memcpy(&header, section.data(), std::min(section.size(), sizeof header));
  if (std::memcmp(header.magic, plugin_info_magic, sizeof header.magic) != 0) {
    return invalid(origin, "the '" EMBER_PLUGIN_SECTION "' section does not start with the ember magic");
  }
  if (header.abi_version != abi_version) {
    return fail(Errc::abi_mismatch, where(origin) + "ABI version mismatch: plugin has " +
                                        std::to_string(header.abi_version) + ", kernel has " +
                                        std::to_string(abi_version));
  }
  if (header.descriptor_size != sizeof(PluginInfoHeader) || section.size() < sizeof header) {
    return invalid(origin, "descriptor size is " + std::to_string(header.descriptor_size) +
                               " bytes, expected " + std::to_string(sizeof(PluginInfoHeader)));
  }
  std::string_view build_id(header.build_id, strnlen(header.build_id, sizeof header.build_id));
  if (build_id.size() == sizeof header.build_id) {
    return invalid(origin, "the build id is not terminated");
  }
  if (build_id != EMBER_BUILD_ID) {
    return fail(Errc::build_mismatch, where(origin) + "build id mismatch: plugin was built as '" +
                                          std::string(build_id) + "', kernel as '" EMBER_BUILD_ID "'");
  }
  std::size_t room = section.size() - sizeof header;
  // The section object may end in padding to its alignment, never in more.
  if (header.blob_size > room || room - header.blob_size >= alignof(std::uint64_t)) {
    return invalid(origin, "the description is " + std::to_string(header.blob_size) +
                               " bytes, the section holds " + std::to_string(room));
  }
  auto raw = read_blob(section.subspan(sizeof header, header.blob_size));
  if (!raw) {
    return invalid(origin, "the '" EMBER_PLUGIN_SECTION "' section's description is truncated or malformed");
  }
  return check_plugin(*raw, origin);
}

Result<PluginInfo> load_plugin(const fs::path& file) {
  auto section = read_section(file);
  if (!section) {
    return fail(std::move(section.error()));
  }
  return parse_plugin_info(*section, file);
}

Result<PluginInfo> read_descriptor(const PluginDescriptor* d, const fs::path& origin,
                                   std::shared_ptr<void> library) {
  if (d == nullptr) {
    return invalid(origin, "the entry point returned no descriptor");
  }
  // The contract's order: ABI version, then size, then build id, before any other field is read.
  if (d->abi_version != abi_version) {
    return fail(Errc::abi_mismatch, where(origin) + "ABI version mismatch: plugin has " +
                                        std::to_string(d->abi_version) + ", kernel has " +
                                        std::to_string(abi_version));
  }
  if (d->descriptor_size != sizeof(PluginDescriptor)) {
    return invalid(origin, "descriptor size is " + std::to_string(d->descriptor_size) + " bytes, expected " +
                               std::to_string(sizeof(PluginDescriptor)));
  }
  auto build_id = bounded(d->build_id, origin, "the build id");
  if (!build_id || !*build_id) {
    return invalid(origin, "missing build id");
  }
  if (**build_id != EMBER_BUILD_ID) {
    return fail(Errc::build_mismatch, where(origin) + "build id mismatch: plugin was built as '" +
                                          **build_id + "', kernel as '" EMBER_BUILD_ID "'");
  }
  if (d->component_descriptor_size != sizeof(ComponentDescriptor)) {
    return invalid(origin, "component descriptor size is " + std::to_string(d->component_descriptor_size) +
                               " bytes, expected " + std::to_string(sizeof(ComponentDescriptor)));
  }
  auto raw = raw_of(*d, origin);
  if (!raw) {
    return fail(std::move(raw.error()));
  }
  auto info = check_plugin(*raw, origin);
  if (!info) {
    return fail(std::move(info.error()));
  }
  if (d->info != nullptr) {
    auto section = parse_plugin_info(
        std::span<const std::byte>(static_cast<const std::byte*>(d->info), d->info_size), origin);
    if (!section) {
      return fail(std::move(section.error()));
    }
    if (auto agreed = adopt(*section, *info); !agreed) {
      return fail(std::move(agreed.error()));
    }
  }
  info->library = std::move(library);
  info->loaded = true;
  return info;
}

Result<void> load_library(PluginInfo& plugin) {
  if (plugin.loaded) {
    return ok();
  }
  const fs::path& file = plugin.path;
  namespace dll = boost::dll;
  auto library = std::make_shared<dll::shared_library>();
  std::error_code ec;
  dlerror();  // clear a stale message so the one read below is this load's
  library->load(file, ec, dll::load_mode::rtld_now | dll::load_mode::rtld_local);
  if (ec || !library->is_loaded()) {
    const char* message = dlerror();
    return fail(Errc::open_failed,
                where(file) + "cannot open: " + (message != nullptr ? std::string(message) : ec.message()));
  }
  if (!library->has(entry_symbol)) {
    return fail(Errc::not_a_plugin,
                where(file) + "not an ember plugin: it has a '" EMBER_PLUGIN_SECTION "' section but no '" +
                    std::string(entry_symbol) +
                    "' entry symbol (write EMBER_PLUGIN(...) in one source file)");
  }
  using Entry = const PluginDescriptor*();
  Entry* entry = nullptr;
  try {
    entry = &library->get_alias<Entry>(entry_symbol);
  } catch (const std::exception& e) {
    return fail(Errc::not_a_plugin, where(file) + "cannot resolve entry symbol: " + e.what());
  }
  if (entry == nullptr) {
    return fail(Errc::not_a_plugin, where(file) + "the entry symbol is null");
  }
  auto runtime = read_descriptor(entry(), file, library);
  if (!runtime) {
    // The section passed these checks: a descriptor that fails them contradicts it.
    return fail(Errc::invalid_descriptor,
                runtime.error().message + " (the '" EMBER_PLUGIN_SECTION "' section said otherwise)");
  }
  if (auto agreed = adopt(plugin, *runtime); !agreed) {
    return agreed;
  }
  plugin.library = std::move(library);
  plugin.loaded = true;
  return ok();
}

}  // namespace ember::kernel
