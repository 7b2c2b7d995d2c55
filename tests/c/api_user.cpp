// api_user.cpp - a C++ program written only against the two public headers.
// tests/test_c_library.py builds it as C++11 (and checks later standards),
// links it statically and dynamically and runs it; it prints "api_user++: OK".
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "xenmapcache.h"
#define XMC_QEMU_LEGACY_API 1 // QEMU's mapcache calls before 9.1
#include "xenmapcache_qemu.h"

namespace {

struct CacheDeleter {
    void operator()(xmc_cache *c) const { xmc_cache_free(c); }
};
using CachePtr = std::unique_ptr<xmc_cache, CacheDeleter>;

int failures = 0;

void expect(bool ok, const char *what)
{
    if (!ok) {
        std::fprintf(stderr, "expected %s\n", what);
        ++failures;
    }
}

} // namespace

int main()
{
    xmc_ram *ram = nullptr;
    xmc_cache *raw = nullptr;
    expect(xmc_ram_new(UINT64_C(8) << 20, &ram) == XMC_OK, "xmc_ram_new");
    expect(xmc_cache_new(xmc_ram_backend(ram), 16, UINT64_C(8) << 20, &raw) == XMC_OK,
           "xmc_cache_new");
    CachePtr cache(raw);
    xmc_ram_free(ram);
    xen_map_cache_use(cache.get());

    std::vector<uint8_t *> dma;
    for (hwaddr a = 0; a < 4; ++a)
        dma.push_back(xen_map_cache(a << 16, 512, 1, true));
    for (uint8_t *p : dma)
        expect(p != nullptr, "locked DMA mapping");
    std::memcpy(dma[2], "c++", 4);
    expect(xen_ram_addr_from_mapcache(dma[2]) == (hwaddr)2 << 16, "reverse lookup");

    xmc_record *records = nullptr;
    size_t n = 0;
    expect(xmc_invalidate(cache.get(), &records, &n) == XMC_OK && n == 4, "4 DMA in flight");
    xmc_records_free(records);
    for (uint8_t *p : dma)
        xen_invalidate_map_cache_entry(p);

    char back[4] = {};
    expect(xmc_read(cache.get(), (hwaddr)2 << 16, back, sizeof back) == XMC_OK &&
               std::strcmp(back, "c++") == 0,
           "data written through a DMA mapping");
    const std::vector<xmc_sg> segs = {{(hwaddr)2 << 16, 3}, {(hwaddr)5 << 16, 4096}};
    std::vector<void *> out(segs.size());
    expect(xmc_map_sg(cache.get(), segs.data(), segs.size(), XMC_DMA, 9, out.data()) == XMC_OK &&
               std::memcmp(out[0], "c++", 3) == 0,
           "a batch of two locked mappings");
    expect(xmc_unlock_sg(cache.get(), out.data(), out.size(), 9) == XMC_OK, "the batch unlocked");
    xmc_stats st{};
    expect(xmc_stats_get(cache.get(), &st) == XMC_OK && st.locked == 0, "all unlocked");
    xen_map_cache_use(nullptr);
    std::printf("api_user++: %s\n", failures ? "FAILED" : "OK");
    return failures != 0;
}
