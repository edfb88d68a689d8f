// Options from TOML values: the half of option_values that needs the TOML parser. It lives in the job side of
// the kernel; the loader, which the trainer's Client API links, reads schema defaults without it.

#include <cmath>
#include <string>

#include <toml++/toml.h>

#include "duration.hpp"
#include "option_values.hpp"

namespace ember::kernel {

namespace {

std::string_view toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

tl::unexpected<Error> wrong_type(const toml::node& node, OptionType type) {
  return fail(Errc::invalid_option,
              "expected " + std::string(to_string(type)) + ", found " + std::string(toml_type_name(node)));
}

}  // namespace

Result<OptionValue> option_from_toml(const toml::node& node, OptionType type, const Substitutions& subs) {
  switch (type) {
    case OptionType::string: {
      auto s = node.value<std::string>();
      if (!node.is_string() || !s) {
        return wrong_type(node, type);
      }
      auto text = substitute(*s, subs);
      if (!text) {
        return fail(Errc::invalid_option, text.error().message);
      }
      return OptionValue(std::move(*text));
    }
    case OptionType::integer:
      if (!node.is_integer()) {
        return wrong_type(node, type);
      }
      return OptionValue(node.as_integer()->get());
    case OptionType::number: {
      double v = 0;
      if (node.is_floating_point()) {
        v = node.as_floating_point()->get();
      } else if (node.is_integer()) {
        v = static_cast<double>(node.as_integer()->get());
      } else {
        return wrong_type(node, type);
      }
      if (!std::isfinite(v)) {
        return fail(Errc::invalid_option, "expected a finite number");
      }
      return OptionValue(v);
    }
    case OptionType::boolean:
      if (!node.is_boolean()) {
        return wrong_type(node, type);
      }
      return OptionValue(node.as_boolean()->get());
    case OptionType::duration: {
      if (!node.is_string()) {
        if (node.is_integer() || node.is_floating_point()) {
          return fail(Errc::invalid_option, "expected a duration with a unit, such as \"30s\" or \"250ms\"");
        }
        return wrong_type(node, type);
      }
      auto d = parse_duration(node.as_string()->get());
      if (!d) {
        return fail(Errc::invalid_option, d.error().message);
      }
      return OptionValue(*d);
    }
    case OptionType::string_list: {
      const auto* array = node.as_array();
      if (array == nullptr) {
        return wrong_type(node, type);
      }
      std::vector<std::string> items;
      items.reserve(array->size());
      for (std::size_t i = 0; i < array->size(); ++i) {
        const auto* item = array->get(i);
        if (!item->is_string()) {
          return fail(Errc::invalid_option, "element " + std::to_string(i) + ": expected a string, found " +
                                                std::string(toml_type_name(*item)));
        }
        auto text = substitute(item->as_string()->get(), subs);
        if (!text) {
          return fail(Errc::invalid_option, "element " + std::to_string(i) + ": " + text.error().message);
        }
        items.push_back(std::move(*text));
      }
      return OptionValue(std::move(items));
    }
  }
  return fail(Errc::invalid_option, "unknown option type " + std::to_string(static_cast<unsigned>(type)));
}

}  // namespace ember::kernel
