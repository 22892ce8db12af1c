// What the runtime's parts share: the error that carries a C API code to the boundary, Python-style
// formatting for messages that read like the Python runtime's, SHA-256 with libcrypto.
#ifndef CERTSEG_RUNTIME_COMMON_HPP
#define CERTSEG_RUNTIME_COMMON_HPP

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace certseg {
namespace rt {

// Thrown inside the runtime, caught at the C API (runtime/capi.cpp), which returns `code` and keeps the message.
class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

[[noreturn]] void fail(int code, const std::string& message);

// repr() of a Python float (shortest round trip; "2.0", "0.0001", "1e-05", "inf", "nan").
std::string py_float(double v);
// repr() of a Python str ('model.xml', with the quote Python would choose).
std::string py_str(const std::string& s);
// str(pathlib.Path(p)): repeated and trailing slashes and "." components dropped ("." for an empty path).
std::string py_path(const std::string& p);

// Lowercase hex SHA-256 of a file (streamed) or of bytes in memory.
std::string sha256_file(const std::string& path);
std::string sha256_bytes(const void* data, std::size_t size);
// The whole file; fails with CERTSEG_ERR_IO naming it.
std::vector<uint8_t> read_file(const std::string& path);

}  // namespace rt
}  // namespace certseg

#endif
