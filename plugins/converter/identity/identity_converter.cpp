// converter.identity: the "wire" format on both sides. to_native shares the wire bytes (no copy), to_wire
// hands them back. A reference plugin and an SDK example of the Converter interface.

#include <ember/converter.hpp>
#include <ember/plugin.hpp>

namespace {

class IdentityConverter final : public ember::Converter {
 public:
  explicit IdentityConverter(const ember::ComponentContext& context)
      : check_(context.options().boolean("check_sizes")) {}

  std::string_view format() const noexcept override { return "wire"; }

  ember::Result<ember::NativeTensor> to_native(const ember::WireTensor& tensor) override {
    if (check_ && !tensor.consistent()) {
      return ember::fail(ember::Errc::invalid_argument,
                         "converter.identity: tensor '" + tensor.name + "' has " +
                             std::to_string(tensor.bytes.size()) + " bytes, which does not match its dtype " +
                             std::string(ember::to_string(tensor.dtype)) + " and shape");
    }
    // The copy of the WireTensor shares the bytes and their owner; nothing is copied but the header.
    return ember::NativeTensor{"wire", std::make_shared<ember::WireTensor>(tensor)};
  }

  ember::Result<ember::WireTensor> to_wire(const ember::NativeTensor& tensor, std::string name) override {
    if (tensor.format != "wire" || !tensor.object) {
      return ember::fail(ember::Errc::invalid_argument, "converter.identity: cannot convert a '" +
                                                            tensor.format + "' tensor (expects 'wire')");
    }
    auto wire = *static_cast<const ember::WireTensor*>(tensor.object.get());
    wire.name = std::move(name);
    return wire;
  }

 private:
  bool check_;
};

constexpr ember::OptionSpec identity_options[] = {
    {"check_sizes", ember::OptionType::boolean, "true",
     "reject tensors whose byte count does not match dtype x shape"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<IdentityConverter>("identity", "Wire tensors as they are, shared without copying",
                                        identity_options),
};

}  // namespace

EMBER_PLUGIN(identity_converter, "identity-converter", "0.1.0", "The identity converter: a reference plugin",
             "Apache-2.0", components)
