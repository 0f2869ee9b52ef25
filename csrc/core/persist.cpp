// save() / load(): the versioned binary format described in docs/format.md.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <string_view>
#include <utility>

#include "core/crc32c.hpp"
#include "core/id_index.hpp"
#include "core/metadata_index.hpp"
#include "core/rows.hpp"
#include "core/validate.hpp"
#include "hive_gpu/error.hpp"
#include "core/storage_impl.hpp"

#if defined(_WIN32)
#include <io.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <windows.h>
#else
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

// The format is little-endian and fields are copied with memcpy.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hive_gpu persistence assumes a little-endian host"
#endif

namespace hive_gpu {

namespace {

constexpr char kMagic[8] = {'H', 'I', 'V', 'E', 'G', 'P', 'U', '\0'};
constexpr std::uint32_t kFormatVersion = 3;
// Version 1 stored every metadata value as a str, versions 1 and 2 float32 rows only (no
// dtype field); both still load.
constexpr std::uint32_t kOldestFormatVersion = 1;
constexpr std::size_t kHeaderBytes = 64;
constexpr std::size_t kSectionHeaderBytes = 16;
constexpr std::size_t kChunkBytes = std::size_t{32} << 20;
// Least bytes one vector takes outside the vectors section: id length + 1 id byte,
// metadata pair count, ordinal.
constexpr std::uint64_t kMinRowOverhead = 4 + 1 + 4 + 4;
// Version 3 keeps the rows' dtype (its code, dtype.hpp) at this header offset.
constexpr std::size_t kDtypeOffset = 40;
// Four sections, each a header and a CRC.
constexpr std::uint64_t kMinSectionsBytes = 4 * (kSectionHeaderBytes + 4);

constexpr std::uint32_t tag(const char (&s)[5]) {
    return std::uint32_t(std::uint8_t(s[0])) | std::uint32_t(std::uint8_t(s[1])) << 8 |
           std::uint32_t(std::uint8_t(s[2])) << 16 | std::uint32_t(std::uint8_t(s[3])) << 24;
}
constexpr std::uint32_t kIds = tag("IDS "), kMeta = tag("META"), kOrds = tag("ORDS"),
                        kVecs = tag("VECS");

template <typename T>
void put(std::string& buf, T v) {
    buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void put_str(std::string& buf, const std::string& s) {
    // Lengths are 32-bit in the file; a longer string would be written corrupt.
    if (s.size() > std::numeric_limits<std::uint32_t>::max())
        throw IoError("a metadata string longer than 4 GiB cannot be saved");
    put<std::uint32_t>(buf, static_cast<std::uint32_t>(s.size()));
    buf.append(s);
}

// Bounds-checked reader over one section's payload.
class Cursor {
   public:
    Cursor(const std::string& b, const char* section) : b_(b), section_(section) {}
    template <typename T>
    T get() {
        need(sizeof(T));
        T v;
        std::memcpy(&v, b_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string get_str(std::size_t max_len) {
        auto n = get<std::uint32_t>();
        if (n > max_len) fail("a string is longer than allowed");
        need(n);
        std::string s = b_.substr(pos_, n);
        pos_ += n;
        return s;
    }
    bool done() const { return pos_ == b_.size(); }
    [[noreturn]] void fail(const std::string& why) const {
        throw CorruptFileError(std::string("corrupt ") + section_ + " section: " + why);
    }

   private:
    void need(std::size_t n) const {
        if (b_.size() - pos_ < n) fail("runs past its end");
    }
    const std::string& b_;
    const char* section_;
    std::size_t pos_ = 0;
};

// One row's metadata, version 2: u32 pairs, then per pair the key, a type byte (MetaType)
// and the value.
void put_metadata(std::string& buf, const Metadata& md) {
    put<std::uint32_t>(buf, static_cast<std::uint32_t>(md.size()));
    for (const auto& [k, v] : md) {
        put_str(buf, k);
        put<std::uint8_t>(buf, static_cast<std::uint8_t>(meta_type(v)));
        switch (meta_type(v)) {
            case MetaType::Str: put_str(buf, std::get<std::string>(v)); break;
            case MetaType::Int: put<std::int64_t>(buf, std::get<std::int64_t>(v)); break;
            case MetaType::Float: put<double>(buf, std::get<double>(v)); break;
            case MetaType::Bool: put<std::uint8_t>(buf, std::get<bool>(v) ? 1 : 0); break;
            case MetaType::Tags: {
                const MetaTags& tags = std::get<MetaTags>(v);
                if (tags.size() > std::numeric_limits<std::uint32_t>::max())
                    throw IoError("a metadata list longer than 2^32 - 1 cannot be saved");
                put<std::uint32_t>(buf, static_cast<std::uint32_t>(tags.size()));
                for (const auto& t : tags) put_str(buf, t);
                break;
            }
        }
    }
}

std::string get_utf8(Cursor& c, std::size_t max_len) {
    std::string s = c.get_str(max_len);
    if (!detail::valid_utf8(s)) c.fail("a string is not valid UTF-8");
    return s;
}

// The inverse of put_metadata (version 1: every value a str, no type byte).
Metadata read_metadata(Cursor& c, std::uint32_t version, std::size_t max_len) {
    const auto pairs = c.get<std::uint32_t>();
    Metadata md;
    for (std::uint32_t p = 0; p < pairs; ++p) {
        std::string k = get_utf8(c, max_len);
        MetaValue v;
        const auto type = version == 1 ? std::uint8_t(0) : c.get<std::uint8_t>();
        switch (type) {
            case std::uint8_t(MetaType::Str): v = get_utf8(c, max_len); break;
            case std::uint8_t(MetaType::Int): v = c.get<std::int64_t>(); break;
            case std::uint8_t(MetaType::Float): {
                const double d = c.get<double>();
                if (d != d) c.fail("a NaN metadata value");
                v = d;
                break;
            }
            case std::uint8_t(MetaType::Bool): {
                const auto b = c.get<std::uint8_t>();
                if (b > 1) c.fail("a bool that is neither 0 nor 1");
                v = b == 1;
                break;
            }
            case std::uint8_t(MetaType::Tags): {
                // Each tag takes at least its 4-byte length: no count can outgrow the section.
                const auto count = c.get<std::uint32_t>();
                if (count > max_len / 4) c.fail("a list longer than the section");
                MetaTags tags;
                tags.reserve(count);
                for (std::uint32_t t = 0; t < count; ++t) tags.push_back(get_utf8(c, max_len));
                v = std::move(tags);
                break;
            }
            default: c.fail("an unknown metadata value type");
        }
        if (!md.emplace(std::move(k), std::move(v)).second) c.fail("repeated metadata key");
    }
    return md;
}

}  // namespace

// ---- I/O layer: where the format's bytes go and come from --------------------------------
// The format code writes to a ByteSink and reads from a ByteSource, so a file and the
// in-memory form (to_bytes / from_bytes) share every line of it.
namespace detail {

class ByteSink {
   public:
    virtual ~ByteSink() = default;
    virtual void write(const void* p, std::size_t n) = 0;
    // The total the format will write; a sink may reserve it.
    virtual void expect(std::uint64_t) {}
};

class ByteSource {
   public:
    virtual ~ByteSource() = default;
    // For messages: the path in quotes, or "the data".
    virtual const std::string& name() const = 0;
    virtual std::uint64_t size() const = 0;
    // Exactly n bytes, or CorruptFileError (the data ended early).
    virtual void read(void* p, std::size_t n) = 0;
    virtual std::uint64_t position() const = 0;
    virtual void seek(std::uint64_t pos) = 0;
};

}  // namespace detail

namespace {

using detail::ByteSink;
using detail::ByteSource;

[[noreturn]] void throw_io(const std::string& what, int err, const std::string& path) {
    throw IoError(what + ": " + std::strerror(err), err, path);
}

// A path reaches open() as a C string: an embedded NUL would silently cut it.
void check_path(const std::string& path) {
    if (path.empty()) throw InvalidArgumentError("a path must not be empty");
    if (path.find('\0') != std::string::npos)
        throw InvalidArgumentError("a path must not contain a NUL character");
}

class StringSink : public ByteSink {
   public:
    explicit StringSink(std::string& out) : out_(out) {}
    void write(const void* p, std::size_t n) override { out_.append(static_cast<const char*>(p), n); }
    void expect(std::uint64_t total) override {
        if (total > out_.max_size()) throw OutOfMemoryError("the store is too large for one in-memory copy");
        out_.reserve(static_cast<std::size_t>(total));
    }

   private:
    std::string& out_;
};

class MemorySource : public ByteSource {
   public:
    MemorySource(const void* data, std::size_t size) : p_(static_cast<const char*>(data)), size_(size) {}
    const std::string& name() const override { return name_; }
    std::uint64_t size() const override { return size_; }
    void read(void* p, std::size_t n) override {
        if (size_ - pos_ < n) throw CorruptFileError("the data is truncated");
        if (n) std::memcpy(p, p_ + pos_, n);
        pos_ += n;
    }
    std::uint64_t position() const override { return pos_; }
    void seek(std::uint64_t pos) override { pos_ = static_cast<std::size_t>(std::min<std::uint64_t>(pos, size_)); }

   private:
    const char* p_;
    std::size_t size_;
    std::size_t pos_ = 0;
    std::string name_ = "the data";
};

#if defined(_WIN32)
// Windows: the C runtime's files (no FIFOs to block on; a directory fails to open).
class FileSink : public ByteSink {
   public:
    // `shown` is the path the caller named, reported in errors; `path` the file written.
    FileSink(const std::string& path, const std::string& shown) : path_(path), shown_(shown) {
        f_ = std::fopen(path.c_str(), "wb");
        if (!f_) throw_io("cannot create '" + path + "'", errno, shown_);
    }
    ~FileSink() override {
        if (f_) std::fclose(f_);
    }
    void write(const void* p, std::size_t n) override {
        if (n && std::fwrite(p, 1, n, f_) != n) throw_io("cannot write '" + path_ + "'", errno, shown_);
    }
    void sync_close() {
        if (std::fflush(f_) != 0) throw_io("cannot write '" + path_ + "'", errno, shown_);
        _commit(_fileno(f_));
        std::FILE* f = std::exchange(f_, nullptr);
        if (std::fclose(f) != 0) throw_io("cannot close '" + path_ + "'", errno, shown_);
    }

   private:
    std::string path_, shown_;
    std::FILE* f_ = nullptr;
};

class FileSource : public ByteSource {
   public:
    explicit FileSource(const std::string& path) : path_(path), name_("'" + path + "'") {
        file_.f = std::fopen(path.c_str(), "rb");
        f_ = file_.f;
        if (!f_) throw_io("cannot open '" + path + "'", errno, path_);
        struct _stat64 st;
        if (_fstat64(_fileno(f_), &st) != 0) throw_io("cannot stat '" + path + "'", errno, path_);
        if (!(st.st_mode & _S_IFREG)) throw IoError("'" + path + "' is not a regular file", 0, path_);
        size_ = static_cast<std::uint64_t>(st.st_size);
    }
    const std::string& name() const override { return name_; }
    std::uint64_t size() const override { return size_; }
    void read(void* p, std::size_t n) override {
        if (n && std::fread(p, 1, n, f_) != n) {
            if (std::ferror(f_)) throw_io("cannot read '" + path_ + "'", errno, path_);
            throw CorruptFileError(name_ + " is truncated");
        }
        pos_ += n;
    }
    std::uint64_t position() const override { return pos_; }
    void seek(std::uint64_t pos) override {
        if (_fseeki64(f_, static_cast<__int64>(pos), SEEK_SET) != 0) throw_io("cannot seek in '" + path_ + "'", errno, path_);
        pos_ = pos;
    }

   private:
    // Closes the file also when the constructor throws after opening it.
    struct Owned {
        std::FILE* f = nullptr;
        ~Owned() {
            if (f) std::fclose(f);
        }
    };
    std::string path_, name_;
    Owned file_;
    std::FILE* f_ = nullptr;
    std::uint64_t size_ = 0, pos_ = 0;
};
#else
class FileSink : public ByteSink {
   public:
    // `shown` is the path the caller named, reported in errors; `path` the file written.
    FileSink(const std::string& path, const std::string& shown) : path_(path), shown_(shown) {
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd_ < 0) throw_io("cannot create '" + path + "'", errno, shown_);
    }
    ~FileSink() override {
        if (fd_ >= 0) ::close(fd_);
    }
    void write(const void* p, std::size_t n) override {
        const char* c = static_cast<const char*>(p);
        while (n) {
            ssize_t w = ::write(fd_, c, n);
            if (w < 0) {
                if (errno == EINTR) continue;
                throw_io("cannot write '" + path_ + "'", errno, shown_);
            }
            c += w;
            n -= static_cast<std::size_t>(w);
        }
    }
    // Flush to the disk, then close.
    void sync_close() {
        if (::fsync(fd_) != 0) throw_io("cannot sync '" + path_ + "'", errno, shown_);
        int fd = std::exchange(fd_, -1);
        if (::close(fd) != 0) throw_io("cannot close '" + path_ + "'", errno, shown_);
    }

   private:
    std::string path_, shown_;
    int fd_ = -1;
};

class FileSource : public ByteSource {
   public:
    // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses anything
    // but a regular file before a byte is read.
    explicit FileSource(const std::string& path) : path_(path), name_("'" + path + "'") {
        fd_.fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd_.fd < 0) throw_io("cannot open '" + path + "'", errno, path_);
        struct stat st;
        if (::fstat(fd_.fd, &st) != 0) throw_io("cannot stat '" + path + "'", errno, path_);
        if (S_ISDIR(st.st_mode)) throw IoError("'" + path + "' is a directory, not a regular file", EISDIR, path_);
        if (!S_ISREG(st.st_mode)) throw IoError("'" + path + "' is not a regular file", 0, path_);
        const int flags = ::fcntl(fd_.fd, F_GETFL);
        if (flags < 0 || ::fcntl(fd_.fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
            throw_io("cannot read '" + path + "'", errno, path_);
        size_ = static_cast<std::uint64_t>(st.st_size);
    }
    const std::string& name() const override { return name_; }
    std::uint64_t size() const override { return size_; }
    void read(void* p, std::size_t n) override {
        char* c = static_cast<char*>(p);
        while (n) {
            ssize_t r = ::read(fd_.fd, c, n);
            if (r < 0) {
                if (errno == EINTR) continue;
                throw_io("cannot read '" + path_ + "'", errno, path_);
            }
            if (r == 0) throw CorruptFileError(name_ + " is truncated");
            c += r;
            n -= static_cast<std::size_t>(r);
            pos_ += static_cast<std::uint64_t>(r);
        }
    }
    std::uint64_t position() const override { return pos_; }
    void seek(std::uint64_t pos) override {
        if (::lseek(fd_.fd, static_cast<off_t>(pos), SEEK_SET) < 0) throw_io("cannot seek in '" + path_ + "'", errno, path_);
        pos_ = pos;
    }

   private:
    // Closes the descriptor also when the constructor throws after opening it.
    struct Owned {
        int fd = -1;
        ~Owned() {
            if (fd >= 0) ::close(fd);
        }
    };
    std::string path_, name_;
    Owned fd_;
    std::uint64_t size_ = 0, pos_ = 0;
};
#endif

void write_section(ByteSink& f, std::uint32_t t, const std::string& payload) {
    std::string h;
    put<std::uint32_t>(h, t);
    put<std::uint32_t>(h, 0);
    put<std::uint64_t>(h, payload.size());
    f.write(h.data(), h.size());
    f.write(payload.data(), payload.size());
    std::uint32_t crc = crc32c(0, payload.data(), payload.size());
    f.write(&crc, 4);
}

// Section header; checks the tag and that the payload fits in what is left of the file.
std::uint64_t read_section_header(ByteSource& f, std::uint32_t expected, const char* name,
                                  std::uint64_t& remaining) {
    if (remaining < kSectionHeaderBytes + 4) throw CorruptFileError(std::string("file ends before the ") + name + " section");
    char h[kSectionHeaderBytes];
    f.read(h, sizeof h);
    remaining -= kSectionHeaderBytes;
    std::uint32_t t, flags;
    std::uint64_t len;
    std::memcpy(&t, h, 4);
    std::memcpy(&flags, h + 4, 4);
    std::memcpy(&len, h + 8, 8);
    if (t != expected) throw CorruptFileError(std::string("expected the ") + name + " section");
    // Version 1 writes 0; anything else is a newer writer or damage.
    if (flags != 0) throw CorruptFileError(std::string("the ") + name + " section has unknown flags");
    if (len > remaining - 4) throw CorruptFileError(std::string("the ") + name + " section runs past the end of the file");
    remaining -= len + 4;
    return len;
}

// CRC-32C of the next `len` bytes, read in chunks of kChunkBytes.
std::uint32_t crc_of_next(ByteSource& f, std::uint64_t len, std::vector<char>& chunk) {
    std::uint32_t crc = 0;
    for (std::uint64_t done = 0; done < len;) {
        const std::size_t m = static_cast<std::size_t>(std::min<std::uint64_t>(len - done, chunk.size()));
        f.read(chunk.data(), m);
        crc = crc32c(crc, chunk.data(), m);
        done += m;
    }
    return crc;
}

// The payload is held only once its CRC has matched in a pass over bounded chunks: a length
// that the file's size allows but its content does not back (a sparse file) costs no memory.
std::string read_payload(ByteSource& f, std::uint64_t len, const char* name) {
    const std::uint64_t start = f.position();
    std::vector<char> chunk(static_cast<std::size_t>(std::min<std::uint64_t>(std::max<std::uint64_t>(len, 1), kChunkBytes)));
    const std::uint32_t first = crc_of_next(f, len, chunk);
    std::uint32_t crc;
    f.read(&crc, 4);
    if (crc != first) throw CorruptFileError(std::string("checksum mismatch in the ") + name + " section");
    f.seek(start);
    std::string b(static_cast<std::size_t>(len), '\0');
    f.read(b.data(), b.size());
    // The parse must see the bytes that were checked, even if the file changed meanwhile.
    if (crc32c(0, b.data(), b.size()) != crc)
        throw CorruptFileError(std::string("checksum mismatch in the ") + name + " section");
    f.seek(start + len + 4);
    return b;
}

#if defined(_WIN32)
int current_pid() { return static_cast<int>(GetCurrentProcessId()); }
bool process_alive(unsigned long pid) {
    HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, static_cast<DWORD>(pid));
    if (!h) return GetLastError() != ERROR_INVALID_PARAMETER;  // access denied: it exists
    DWORD code = 0;
    const bool alive = !GetExitCodeProcess(h, &code) || code == STILL_ACTIVE;
    CloseHandle(h);
    return alive;
}
#else
int current_pid() { return static_cast<int>(getpid()); }
bool process_alive(unsigned long pid) {
    if (pid == 0 || pid > static_cast<unsigned long>(std::numeric_limits<pid_t>::max())) return false;
    return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}
#endif

// Digits only, at least one, no overflow.
bool parse_decimal(std::string_view s, unsigned long& out) {
    if (s.empty() || s.size() > 18) return false;
    out = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        out = out * 10 + static_cast<unsigned long>(c - '0');
    }
    return true;
}

// Removes `path.tmp.<pid>.<n>` left by a save whose process died (killed mid-write). A
// living process's temporaries, this one's included, are never touched. Best effort: a
// failure here must not fail the save.
void remove_dead_temporaries(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path target(path);
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    const std::string prefix = target.filename().string() + ".tmp.";
    fs::directory_iterator it(dir, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
        const std::string_view rest = std::string_view(name).substr(prefix.size());
        const auto dot = rest.find('.');
        unsigned long pid, counter;
        if (dot == std::string_view::npos || !parse_decimal(rest.substr(0, dot), pid) ||
            !parse_decimal(rest.substr(dot + 1), counter))
            continue;
        if (pid == static_cast<unsigned long>(current_pid()) || process_alive(pid)) continue;
        std::error_code ignored;
        if (it->is_regular_file(ignored)) fs::remove(it->path(), ignored);
    }
}

void replace_file(const std::string& from, const std::string& to) {
#if defined(_WIN32)
    if (!MoveFileExA(from.c_str(), to.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
        throw IoError("cannot replace '" + to + "'", 0, to);
#else
    if (std::rename(from.c_str(), to.c_str()) != 0) throw_io("cannot replace '" + to + "'", errno, to);
    // Make the rename itself durable. The new file is already in place when this fails.
    const auto slash = to.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : to.substr(0, slash);
    const std::string unconfirmed = "'" + to + "' was replaced, but the rename is not confirmed durable";
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_io(unconfirmed + " (cannot open its directory)", errno, to);
    // EINVAL: this file system cannot sync a directory; there is nothing more to do.
    if (::fsync(fd) != 0 && errno != EINVAL) {
        const int err = errno;
        ::close(fd);
        throw_io(unconfirmed + " (syncing its directory failed)", err, to);
    }
    ::close(fd);
#endif
}

std::atomic<unsigned> g_temp_counter{0};

}  // namespace

void VectorStorage::Impl::write_to(ByteSink& f) const {
    std::shared_lock<detail::WriterPreferringMutex> lock(mutex_);
    check_open();
    const std::size_t n = id_of_.size();

    std::string ids, meta, ords;
    for (const auto& id : id_of_) put_str(ids, id);
    for (std::size_t i = 0; i < n; ++i) put_metadata(meta, (*metadata_of_)[i]);
    ords.append(reinterpret_cast<const char*>(ordinal_of_.data()), n * sizeof(std::uint32_t));

    std::string h(kHeaderBytes, '\0');
    std::memcpy(h.data(), kMagic, 8);
    std::uint32_t version = kFormatVersion, metric = static_cast<std::uint32_t>(metric_);
    std::uint64_t dim = dimension_, count = n, next = next_ordinal_;
    std::memcpy(h.data() + 8, &version, 4);
    std::memcpy(h.data() + 12, &metric, 4);
    std::memcpy(h.data() + 16, &dim, 8);
    std::memcpy(h.data() + 24, &count, 8);
    std::memcpy(h.data() + 32, &next, 8);
    const std::uint32_t dtype_code = static_cast<std::uint32_t>(dtype_);
    std::memcpy(h.data() + kDtypeOffset, &dtype_code, 4);
    std::uint32_t hcrc = crc32c(0, h.data(), 60);
    std::memcpy(h.data() + 60, &hcrc, 4);
    // Rows are written in the store's dtype: the stored values, read back and narrowed again
    // bit for bit.
    const std::size_t row_bytes = dimension_ * dtype_size(dtype_);
    f.expect(kHeaderBytes + 4 * (kSectionHeaderBytes + 4) + ids.size() + meta.size() + ords.size() +
             std::uint64_t(n) * row_bytes);
    f.write(h.data(), h.size());
    write_section(f, kIds, ids);
    write_section(f, kMeta, meta);
    write_section(f, kOrds, ords);

    // Rows stream from the engine in chunks: no second full copy on the host.
    std::string sh;
    put<std::uint32_t>(sh, kVecs);
    put<std::uint32_t>(sh, 0);
    put<std::uint64_t>(sh, std::uint64_t(n) * row_bytes);
    f.write(sh.data(), sh.size());
    const std::size_t rows_per_chunk = std::max<std::size_t>(1, kChunkBytes / (dimension_ * sizeof(float)));
    std::vector<float> buf(std::min(n, rows_per_chunk) * dimension_);
    std::vector<unsigned char> narrow(dtype_ == Dtype::Float32 ? 0 : std::min(n, rows_per_chunk) * row_bytes);
    std::uint32_t crc = 0;
    for (std::size_t first = 0; first < n; first += rows_per_chunk) {
        std::size_t m = std::min(rows_per_chunk, n - first);
        engine_->read(first, m, buf.data());
        const void* out = buf.data();
        if (dtype_ != Dtype::Float32) {
            detail::narrow_stored(buf.data(), m * dimension_, dtype_, narrow.data());
            out = narrow.data();
        }
        f.write(out, m * row_bytes);
        crc = crc32c(crc, out, m * row_bytes);
    }
    f.write(&crc, 4);
}

void VectorStorage::save(const std::string& path) const {
    check_path(path);
    remove_dead_temporaries(path);
    const std::string tmp = path + ".tmp." + std::to_string(current_pid()) + "." + std::to_string(g_temp_counter++);
    try {
        FileSink f(tmp, path);
        impl_->write_to(f);
        f.sync_close();
        replace_file(tmp, path);
    } catch (...) {
        std::remove(tmp.c_str());
        throw;
    }
}

std::string VectorStorage::to_bytes() const {
    std::string out;
    StringSink sink(out);
    impl_->write_to(sink);
    return out;
}

std::shared_ptr<VectorStorage> VectorStorage::load(const std::shared_ptr<Context>& context,
                                                   const std::string& path) {
    check_path(path);
    FileSource f(path);
    return Impl::read_from(context, f, nullptr);
}

std::shared_ptr<VectorStorage> VectorStorage::from_bytes(const std::shared_ptr<Context>& context,
                                                         const void* data, std::size_t size) {
    MemorySource source(data, size);
    return Impl::read_from(context, source, nullptr);
}

StoreFileInfo VectorStorage::inspect_file(const std::string& path) {
    check_path(path);
    FileSource f(path);
    StoreFileInfo info;
    Impl::read_from(nullptr, f, &info);
    return info;
}

std::shared_ptr<VectorStorage> VectorStorage::Impl::read_from(const std::shared_ptr<Context>& context,
                                                        ByteSource& f, StoreFileInfo* info) {
    const std::string& path = f.name();
    std::uint64_t remaining = f.size();
    if (remaining < kHeaderBytes) throw CorruptFileError(path + " is too short to be a hive_gpu store");
    char h[kHeaderBytes];
    f.read(h, kHeaderBytes);
    remaining -= kHeaderBytes;
    if (std::memcmp(h, kMagic, 8) != 0) throw CorruptFileError(path + " is not a hive_gpu store");
    std::uint32_t version, metric, hcrc;
    std::uint64_t dim, count, next;
    std::memcpy(&version, h + 8, 4);
    std::memcpy(&metric, h + 12, 4);
    std::memcpy(&dim, h + 16, 8);
    std::memcpy(&count, h + 24, 8);
    std::memcpy(&next, h + 32, 8);
    std::memcpy(&hcrc, h + 60, 4);
    if (hcrc != crc32c(0, h, 60)) throw CorruptFileError("'" + path + "' has a damaged header");
    if (version < kOldestFormatVersion || version > kFormatVersion)
        throw CorruptFileError("'" + path + "' uses format version " + std::to_string(version) +
                               "; this library reads versions " + std::to_string(kOldestFormatVersion) +
                               " to " + std::to_string(kFormatVersion));
    if (metric > 2) throw CorruptFileError("'" + path + "' names an unknown metric");
    if (dim == 0 || dim > kMaxDimension) throw CorruptFileError("'" + path + "' has an invalid dimension");
    // Ordinals are 32-bit; a larger counter would wrap on the next add.
    if (next > std::numeric_limits<std::uint32_t>::max())
        throw CorruptFileError(path + " has an invalid ordinal counter");
    Dtype dtype = Dtype::Float32;
    std::size_t reserved_from = kDtypeOffset;
    if (version >= 3) {
        std::uint32_t code;
        std::memcpy(&code, h + kDtypeOffset, 4);
        if (code > static_cast<std::uint32_t>(Dtype::BFloat16))
            throw CorruptFileError(path + " names an unknown dtype (code " + std::to_string(code) + ")");
        dtype = static_cast<Dtype>(code);
        reserved_from = kDtypeOffset + 4;
    }
    for (std::size_t i = reserved_from; i < 60; ++i)
        if (h[i] != 0) throw CorruptFileError(path + " has unknown header fields set");
    const std::size_t element_bytes = dtype_size(dtype);
    // The file must be large enough to hold what the header promises: no absurd allocations.
    if (remaining < kMinSectionsBytes ||
        count > (remaining - kMinSectionsBytes) / (dim * element_bytes + kMinRowOverhead))
        throw CorruptFileError(path + " is shorter than its header says");
    const std::size_t n = static_cast<std::size_t>(count);

    // Each section's length is checked against the count before its payload is read.
    const std::uint64_t ids_len = read_section_header(f, kIds, "ids", remaining);
    if (ids_len < count * (4 + 1)) throw CorruptFileError("corrupt ids section: too short for the count");
    std::string ids_b = read_payload(f, ids_len, "ids");
    const std::uint64_t meta_len = read_section_header(f, kMeta, "metadata", remaining);
    if (meta_len < count * 4) throw CorruptFileError("corrupt metadata section: too short for the count");
    std::string meta_b = read_payload(f, meta_len, "metadata");
    const std::uint64_t ords_len = read_section_header(f, kOrds, "ordinals", remaining);
    if (ords_len != count * sizeof(std::uint32_t)) throw CorruptFileError("corrupt ordinals section: wrong length");
    std::string ords_b = read_payload(f, ords_len, "ordinals");

    std::vector<std::string> ids;
    ids.reserve(n);
    detail::IdIndex index;  // finds repeated ids here, then becomes the storage's index
    index.reserve(n);
    {
        Cursor c(ids_b, "ids");
        for (std::size_t i = 0; i < n; ++i) {
            ids.push_back(get_utf8(c, kMaxIdBytes));
            if (ids.back().empty() || index.insert(ids, i) != detail::IdIndex::npos)
                c.fail("empty or repeated id");
        }
        if (!c.done()) c.fail("trailing bytes");
    }
    detail::MetadataTable metas;
    metas.reserve(n);
    {
        Cursor c(meta_b, "metadata");
        for (std::size_t i = 0; i < n; ++i)
            metas.push_back(detail::MetadataTable::make(read_metadata(c, version, meta_b.size())));
        if (!c.done()) c.fail("trailing bytes");
    }
    std::vector<std::uint32_t> ords(n);
    std::memcpy(ords.data(), ords_b.data(), ords_b.size());
    std::uint64_t max_ord = 0;
    {
        // Ties rank by ordinal, so two rows must never share one.
        std::vector<std::uint32_t> sorted = ords;
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
            throw CorruptFileError("corrupt ordinals section: repeated ordinal");
        if (n) max_ord = sorted.back();
    }

    const std::uint64_t vec_len = read_section_header(f, kVecs, "vectors", remaining);
    if (vec_len != count * dim * element_bytes) throw CorruptFileError("corrupt vectors section: wrong length");
    if (remaining != 0) throw CorruptFileError(path + " has trailing bytes");

    // Without a context the rows are only checked (inspect_file).
    std::shared_ptr<VectorStorage> storage;
    Engine* engine = nullptr;
    if (context) {
        storage = std::make_shared<VectorStorage>(context, context->make_engine(dim, static_cast<Metric>(metric), dtype));
        engine = storage->impl_->engine_.get();
        engine->reserve(n);
    }
    const std::size_t row_bytes = dim * element_bytes;
    const std::size_t rows_per_chunk = std::max<std::size_t>(1, kChunkBytes / row_bytes);
    std::vector<unsigned char> buf(std::min(n, rows_per_chunk) * row_bytes);
    std::uint32_t crc = 0;
    for (std::size_t first = 0; first < n; first += rows_per_chunk) {
        std::size_t m = std::min(rows_per_chunk, n - first);
        f.read(buf.data(), m * row_bytes);
        crc = crc32c(crc, buf.data(), m * row_bytes);
        try {
            // The write rules on the rows as they are (finite, norm bound), checked in place.
            detail::StoreRows(buf.data(), dtype, m, dim, dtype, "stored vectors");
        } catch (const InvalidArgumentError& e) {
            throw CorruptFileError(std::string("corrupt vectors section: ") + e.what());
        }
        if (engine) engine->append(buf.data(), ords.data() + first, m);
    }
    std::uint32_t stored;
    f.read(&stored, 4);
    if (stored != crc) throw CorruptFileError("checksum mismatch in the vectors section");
    if (info) {
        info->format_version = version;
        info->metric = static_cast<Metric>(metric);
        info->dimension = dim;
        info->count = count;
        info->next_ordinal = next;
        info->dtype = dtype_name(dtype);
        info->file_bytes = f.size();
    }
    if (!storage) return nullptr;

    storage->impl_->id_of_ = std::move(ids);
    *storage->impl_->index_ = std::move(index);
    *storage->impl_->metadata_of_ = std::move(metas);
    storage->impl_->ordinal_of_ = std::move(ords);
    storage->impl_->next_ordinal_ = std::max<std::uint64_t>(next, n ? max_ord + 1 : 0);
    return storage;
}

}  // namespace hive_gpu
