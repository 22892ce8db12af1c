// See model_cache.hpp; certseg_rt/runtime/model_cache.py is the same cache in Python.
#include "model_cache.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>

#include "common.hpp"

namespace certseg {
namespace rt {

namespace {

const char kMagic[] = "certseg-rt compiled model 1\n";
const char kEnv[] = "CERTSEG_CACHE_DIR";

std::string home() {
  const char* h = std::getenv("HOME");
  if (h != nullptr && *h) return h;
  const passwd* pw = getpwuid(getuid());
  return pw != nullptr && pw->pw_dir != nullptr ? pw->pw_dir : "";
}

// Folders whose failed write this process has reported (once each).
std::set<std::string>& noted() {
  static std::set<std::string> folders;
  return folders;
}
std::mutex noted_mutex;

mode_t umask_now() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return mask;
}

}  // namespace

std::string cache_root(const char* cache_dir) {
  if (cache_dir != nullptr) return cache_dir;  // "" : no cache
  const char* env = std::getenv(kEnv);
  if (env != nullptr && *env) return env;
#if defined(__APPLE__)
  const std::string base = home().empty() ? "" : home() + "/Library/Caches";
#else
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const std::string base = xdg != nullptr && *xdg ? std::string(xdg) : (home().empty() ? "" : home() + "/.cache");
#endif
  return base.empty() ? "" : base + "/certseg-rt";
}

std::string key_text(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string text;
  for (const auto& f : fields) text += f.first + " " + f.second + "\n";
  return text;
}

ModelCache::ModelCache(const std::string& root, const std::string& runner) : root_(root), folder_(root + "/" + runner) {}

std::string ModelCache::path(const std::string& key) const {
  return folder_ + "/" + sha256_bytes(key.data(), key.size()).substr(0, 40) + ".blob";
}

bool ModelCache::read(const std::string& key, std::string& payload) {
  std::ifstream f(path(key), std::ios::binary);
  if (!f) {
    ++misses;
    return false;
  }
  const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::size_t magic = sizeof kMagic - 1;
  auto reject = [this] {
    ++rejected;
    return false;
  };
  if (f.bad() || data.compare(0, magic, kMagic) != 0) return reject();
  const std::size_t eol = data.find('\n', magic);
  if (eol == std::string::npos || eol - magic > 200) return reject();
  std::istringstream line(data.substr(magic, eol - magic));
  std::string digest;
  unsigned long long size = 0, key_size = 0;
  char extra;
  if (!(line >> digest >> size >> key_size) || (line >> extra)) return reject();
  const std::size_t start = eol + 1;
  if (key_size != key.size() || data.size() != start + key_size + size || data.compare(start, key_size, key) != 0) {
    return reject();
  }
  if (sha256_bytes(data.data() + start + key_size, size) != digest) return reject();
  payload.assign(data, start + key_size, size);
  ++hits;
  return true;
}

bool ModelCache::write(const std::string& key, const std::string& payload, std::string& note) {
  const std::string header = std::string(kMagic) + sha256_bytes(payload.data(), payload.size()) + " " +
                             std::to_string(payload.size()) + " " + std::to_string(key.size()) + "\n";
  std::string tmp = folder_ + "/.entry-XXXXXX.tmp";
  int fd = -1;
  int error = 0;
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(root_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);  // e.g. ~/.cache; ours are 0700
  errno = 0;
  if ((::mkdir(root_.c_str(), 0700) != 0 && errno != EEXIST) || (::mkdir(folder_.c_str(), 0700) != 0 && errno != EEXIST)) {
    error = errno;
  } else if ((fd = ::mkstemps(&tmp[0], 4)) < 0) {
    error = errno;
  } else {
    ::fchmod(fd, 0666 & ~umask_now());  // an ordinary file (mkstemp's are private): the folder decides who reads
    bool ok = true;
    for (const std::string* part : {&header, &key, &payload}) {
      std::size_t done = 0;
      while (ok && done < part->size()) {
        const ssize_t n = ::write(fd, part->data() + done, part->size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ok = false, error = errno ? errno : EIO;
        else done += static_cast<std::size_t>(n);
      }
    }
    if (::close(fd) != 0 && ok) ok = false, error = errno;
    if (ok && std::rename(tmp.c_str(), path(key).c_str()) != 0) ok = false, error = errno;
    if (ok) return true;
    ::unlink(tmp.c_str());
  }
  std::lock_guard<std::mutex> lock(noted_mutex);
  if (noted().insert(folder_).second) {
    note = "cannot write the compiled-model cache " + folder_ + " (" + std::strerror(error) +
           "): compiled models are not kept for the next process; point --cache-dir or $" + kEnv +
           " at a writable folder, or use --no-cache";
  }
  return false;
}

}  // namespace rt
}  // namespace certseg
