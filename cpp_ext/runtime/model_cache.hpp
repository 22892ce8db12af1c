// The per-user compiled-model cache, entry for entry the Python runtime's (certseg_rt/runtime/model_cache.py):
// the same folder, key text, file names and format, so either runtime imports what the other compiled.
//
//   certseg-rt compiled model 1\n
//   <sha256 of the payload, hex> <payload bytes> <key bytes>\n
//   <key: every input of the compile, one "name value" line each>
//   <payload: the exported compiled model>
//
// An entry is used only when its key equals the one asked for, byte for byte, and its payload has its recorded
// length and SHA-256; anything else is ignored and overwritten by the fresh compile.  Entries are written whole
// (a temporary file in the folder, then a rename).
#ifndef CERTSEG_RUNTIME_MODEL_CACHE_HPP
#define CERTSEG_RUNTIME_MODEL_CACHE_HPP

#include <string>
#include <utility>
#include <vector>

namespace certseg {
namespace rt {

// The cache root: `cache_dir` when given ("" turns the cache off), else $CERTSEG_CACHE_DIR, else the platform's
// per-user cache folder + "/certseg-rt" ($XDG_CACHE_HOME or ~/.cache; ~/Library/Caches on macOS).  "" for none.
std::string cache_root(const char* cache_dir);

// "name value\n" per field, in order.
std::string key_text(const std::vector<std::pair<std::string, std::string>>& fields);

class ModelCache {
 public:
  ModelCache(const std::string& root, const std::string& runner);  // entries in root/runner

  std::string path(const std::string& key) const;
  // The payload of the entry for `key`, or false: missing, unreadable, or not exactly what was written for it.
  bool read(const std::string& key, std::string& payload);
  // The runner could not use what read() returned (its library refused it).
  void refused() { --hits, ++rejected; }
  // Store `payload` under `key`, whole or not at all.  False when the folder cannot be written; the first such
  // failure of the process for this folder sets `note` (one line; the caller shows it).
  bool write(const std::string& key, const std::string& payload, std::string& note);

  int hits = 0, misses = 0, rejected = 0;

 private:
  std::string root_, folder_;
};

}  // namespace rt
}  // namespace certseg

#endif
