// Errors, Python-style formatting and SHA-256 (OpenSSL's libcrypto, EVP interface).
#include "common.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "certseg_runtime.h"

namespace certseg {
namespace rt {

void fail(int code, const std::string& message) { throw Error(code, message); }

std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: positional for exponents -4 <= e < 16, else d.ddde+XX.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  const std::size_t epos = sci.find('e');
  const int exponent = std::stoi(sci.substr(epos + 1));
  std::string digits = sci.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out = "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    } else if (static_cast<std::size_t>(exponent) + 1 >= digits.size()) {
      out = digits + std::string(static_cast<std::size_t>(exponent) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<std::size_t>(exponent) + 1) + "." +
            digits.substr(static_cast<std::size_t>(exponent) + 1);
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += e;
  }
  return negative ? "-" + out : out;
}

std::string py_str(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    if (c == quote || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  return out + quote;
}

std::string py_path(const std::string& p) {
  const bool absolute = !p.empty() && p[0] == '/';
  std::vector<std::string> parts;
  std::size_t i = 0;
  while (i <= p.size()) {
    const std::size_t j = p.find('/', i);
    const std::string part = p.substr(i, j == std::string::npos ? std::string::npos : j - i);
    if (!part.empty() && part != ".") parts.push_back(part);
    if (j == std::string::npos) break;
    i = j + 1;
  }
  std::string out = absolute ? "/" : "";
  for (std::size_t k = 0; k < parts.size(); ++k) out += (k ? "/" : "") + parts[k];
  return out.empty() ? "." : out;
}

namespace {

struct DigestDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

std::string hex(const unsigned char* d, unsigned int n) {
  static const char* digits = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (unsigned int i = 0; i < n; ++i) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  return out;
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) {
      fail(CERTSEG_ERR_MEMORY, "cannot start a SHA-256 digest (libcrypto)");
    }
  }
  void update(const void* data, std::size_t n) {
    if (n && EVP_DigestUpdate(ctx_.get(), data, n) != 1) fail(CERTSEG_ERR_MEMORY, "SHA-256 update failed");
  }
  std::string hexdigest() {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), d, &n) != 1) fail(CERTSEG_ERR_MEMORY, "SHA-256 final failed");
    return hex(d, n);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, DigestDeleter> ctx_;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

std::unique_ptr<std::FILE, FileCloser> open_for_reading(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) fail(CERTSEG_ERR_IO, "cannot read " + path + " (" + std::strerror(errno) + ")");
  return f;
}

}  // namespace

std::string sha256_bytes(const void* data, std::size_t size) {
  Sha256 h;
  h.update(data, size);
  return h.hexdigest();
}

std::string sha256_file(const std::string& path) {
  auto f = open_for_reading(path);
  Sha256 h;
  std::vector<unsigned char> block(1 << 20);
  std::size_t got;
  while ((got = std::fread(block.data(), 1, block.size(), f.get())) > 0) h.update(block.data(), got);
  if (std::ferror(f.get())) fail(CERTSEG_ERR_IO, "cannot read " + path + " (read error)");
  return h.hexdigest();
}

std::vector<uint8_t> read_file(const std::string& path) {
  auto f = open_for_reading(path);
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> block(1 << 20);
  std::size_t got;
  while ((got = std::fread(block.data(), 1, block.size(), f.get())) > 0) {
    bytes.insert(bytes.end(), block.begin(), block.begin() + static_cast<std::ptrdiff_t>(got));
  }
  if (std::ferror(f.get())) fail(CERTSEG_ERR_IO, "cannot read " + path + " (read error)");
  return bytes;
}

}  // namespace rt
}  // namespace certseg
