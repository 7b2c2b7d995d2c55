/*
 * test_main.c - runs the C unit tests of the core and the shared helpers.
 *
 * Every test runs in its own forked child, so a crash, a sanitizer report or
 * a leak (LeakSanitizer runs when the child exits) fails that test alone; the
 * child also checks that the test closed every file descriptor it opened.
 * Usage: test_core [-l] [name-substring...]; XT_NOFORK=1 runs tests in-process
 * (for a debugger).  Output ends with "N passed, M failed".
 */
#include "xt.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern const xt_test xt_rules_tests[];
extern const xt_test xt_pitfalls_tests[];
extern const xt_test xt_memory_tests[];
extern const xt_test xt_input_tests[];
extern const xt_test xt_faults_tests[];
extern const xt_test xt_close_tests[];
extern const xt_test xt_regress_tests[];
extern const xt_test xt_nowait_tests[];
extern const xt_test xt_sg_tests[];
extern const xt_test xt_grants_tests[];
extern const xt_test xt_reliability_tests[];
extern const xt_test xt_qemu_tests[];
extern const xt_test xt_trace_tests[];
extern const xt_test xt_lockfree_tests[];

static const xt_test *const groups[] = {
    xt_rules_tests, xt_pitfalls_tests, xt_memory_tests,
    xt_input_tests, xt_faults_tests,   xt_close_tests, xt_regress_tests,
    xt_nowait_tests, xt_sg_tests, xt_grants_tests, xt_reliability_tests,
    xt_qemu_tests,
    xt_trace_tests, xt_lockfree_tests,
};

static const char *current;

/* Built with ASan: huge requests must come back as XMC_ENOMEM, not kill us. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "detect_leaks=1:allocator_may_return_null=1";
}

void xt_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "FAIL %s (%s:%d): ", current, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1); /* skip LeakSanitizer: the test stopped half way */
}

bool xt_slow(void)
{
    const char *v = getenv("XT_SLOW");

    return v && *v && strcmp(v, "0") != 0;
}

/* ---- guest RAM helpers ---------------------------------------------------- */

xmc_ram *xt_ram(uint64_t size)
{
    uint8_t page[PAGE];
    xmc_ram *ram;

    if (xmc_ram_new(size, &ram) != XMC_OK)
        xt_fail(__FILE__, __LINE__, "xmc_ram_new(%" PRIu64 ") failed", size);
    for (uint64_t p = 0; p < size; p += PAGE) {
        for (uint64_t i = 0; i < PAGE; i++)
            page[i] = xt_pattern(p + i);
        if (xmc_ram_write(ram, p, page, PAGE) != XMC_OK)
            xt_fail(__FILE__, __LINE__, "filling guest RAM failed");
    }
    return ram;
}

bool xt_has_pattern(const void *p, uint64_t paddr, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i] != xt_pattern(paddr + i))
            return false;
    return true;
}

xmc_stats xt_stats(xmc_cache *c)
{
    xmc_stats s;

    if (xmc_stats_get(c, &s) != XMC_OK)
        xt_fail(__FILE__, __LINE__, "xmc_stats_get failed");
    return s;
}

size_t xt_nlocked(xmc_cache *c)
{
    xmc_record *r;
    size_t n;

    if (xmc_locked(c, &r, &n) != XMC_OK)
        xt_fail(__FILE__, __LINE__, "xmc_locked failed");
    xmc_records_free(r);
    return n;
}

const char *xt_every_call(xmc_cache *c, int want)
{
    xmc_record *r;
    xmc_memory m;
    xmc_stats s;
    uint64_t u;
    size_t n;
    void *p;
    char buf[8] = { 0 };
    const xmc_sg sg = { 0x20000, 0x10 };
    void *addr = buf;

#define XT_CALL(call)                                                         \
    do {                                                                      \
        if ((call) != want)                                                   \
            return #call;                                                     \
    } while (0)
    XT_CALL(xmc_map(c, 0x10000, 0, 0, 0, &p));
    XT_CALL(xmc_map(c, 0x30000, 0x10, XMC_LOCK | XMC_DMA, 0, &p));
    XT_CALL(xmc_unlock(c, buf, NULL));
    XT_CALL(xmc_unlock_tag(c, buf, 0));
    XT_CALL(xmc_ram_addr(c, buf, &u));
    XT_CALL(xmc_map_nowait(c, 0x10000, 0, 0, 0, &p));
    XT_CALL(xmc_unlock_tag_nowait(c, buf, 0));
    XT_CALL(xmc_ram_addr_nowait(c, buf, &u));
    XT_CALL(xmc_read_nowait(c, 0, buf, sizeof(buf)));
    XT_CALL(xmc_write_nowait(c, 0, buf, sizeof(buf)));
    XT_CALL(xmc_map_sg(c, &sg, 1, XMC_DMA, 0, &p));
    XT_CALL(xmc_map_sg_nowait(c, &sg, 1, 0, 0, &p));
    XT_CALL(xmc_unlock_sg(c, &addr, 1, 0));
    XT_CALL(xmc_unlock_sg_nowait(c, &addr, 1, 0));
    XT_CALL(xmc_invalidate(c, NULL, NULL));
    XT_CALL(xmc_invalidate(c, &r, &n));
    XT_CALL(xmc_replace(c, 0x10000, 0x20000, 0, &p));
    XT_CALL(xmc_locked(c, &r, &n));
    XT_CALL(xmc_read(c, 0, buf, sizeof(buf)));
    XT_CALL(xmc_write(c, 0, buf, sizeof(buf)));
    XT_CALL(xmc_stats_get(c, &s));
    XT_CALL(xmc_memory_get(c, &m));
    XT_CALL(xmc_cache_set_lock_limit(c, 1));
    XT_CALL(xmc_cache_set_dummy(c, true));
    XT_CALL(xmc_cache_set_translate(c, NULL, NULL));
    XT_CALL(xmc_cache_close(c));
#undef XT_CALL
    return NULL;
}

/* ---- the gate ------------------------------------------------------------ */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate; /* 0: closed, 1: a callback is inside, 2: open */

static void gate_set(int state)
{
    pthread_mutex_lock(&gate_mu);
    gate = state;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void gate_await(int state)
{
    pthread_mutex_lock(&gate_mu);
    while (gate != state)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

void xt_gate_pass(void)
{
    gate_set(1);
    gate_await(2);
}

void xt_gate_wait_inside(void)
{
    gate_await(1);
}

void xt_gate_open(void)
{
    gate_set(2);
}

/*
 * Run fn in a forked child (with a watchdog: a hang fails): did it get to the
 * end?  The child says so through a pipe rather than its exit status, which
 * valgrind would turn into a failure for what the child leaks on purpose.
 */
bool xt_in_child(void (*fn)(void))
{
    int fds[2], status;
    char done = 0;
    pid_t pid;

    CHECK(pipe(fds) == 0);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        alarm(20);
        fn();
        if (write(fds[1], "k", 1) != 1)
            _exit(1);
        _exit(0);
    }
    CHECK(pid > 0);
    close(fds[1]);
    if (read(fds[0], &done, 1) != 1)
        done = 0;
    close(fds[0]);
    CHECK(waitpid(pid, &status, 0) == pid);
    return done == 'k';
}

/* ---- mapping probes ---------------------------------------------------- */

bool xt_mapped(const void *p, size_t len, bool all)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(PAGE - 1);
    uintptr_t end = (uintptr_t)p + len;
    unsigned char vec;
    bool any = false;

    for (; a < end; a += PAGE) {
        bool m = mincore((void *)a, PAGE, &vec) == 0;
        if (m)
            any = true;
        else if (all)
            return false;
    }
    return all ? true : any;
}

bool xt_prot(const void *p, char out[5])
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    bool found = false;

    if (!f)
        return false;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[5];

        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 &&
            lo <= (uintptr_t)p && (uintptr_t)p < hi) {
            memcpy(out, perms, 5);
            found = true;
            break;
        }
    }
    fclose(f);
    return found;
}

static void on_fault(int sig)
{
    (void)sig;
    _exit(77);
}

bool xt_faults(void (*fn)(void *), void *arg)
{
    int status;
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0)
        xt_fail(__FILE__, __LINE__, "fork failed");
    if (pid == 0) {
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_fault;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        fn(arg);
        _exit(0);
    }
    if (waitpid(pid, &status, 0) != pid)
        xt_fail(__FILE__, __LINE__, "waitpid failed");
    if (!WIFEXITED(status))
        return false;
    /* Under valgrind (--error-exitcode=3) the child's invalid access is
     * reported and its exit status replaced. */
    return WEXITSTATUS(status) == 77 || (xt_slow() && WEXITSTATUS(status) == 3);
}

void xt_touch_read(void *p)
{
    volatile uint8_t v = *(volatile uint8_t *)p;
    (void)v;
}

void xt_touch_write(void *p)
{
    *(volatile uint8_t *)p = 0x5a;
}

int xt_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

/* ---- the runner ---------------------------------------------------------- */

static bool selected(const char *name, int argc, char **argv)
{
    int any = 0;

    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        any = 1;
        if (strstr(name, argv[i]))
            return true;
    }
    return !any;
}

static void run_in_child(const xt_test *t)
{
    int fds = xt_fd_count();

    alarm(xt_slow() ? 600 : 60); /* a deadlock fails its test (SIGALRM), not the run */
    t->fn();
    alarm(0);
    if (xt_fd_count() != fds)
        xt_fail(__FILE__, __LINE__, "file descriptors: %d before, %d after",
                fds, xt_fd_count());
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    bool nofork = getenv("XT_NOFORK") && strcmp(getenv("XT_NOFORK"), "0") != 0;
    int passed = 0, failed = 0;
    double t0 = now();

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
        for (const xt_test *t = groups[g]; t->name; t++) {
            int status = 0;
            double t1;
            pid_t pid;

            if (!selected(t->name, argc, argv))
                continue;
            if (argc > 1 && strcmp(argv[1], "-l") == 0) {
                printf("%s\n", t->name);
                continue;
            }
            current = t->name;
            t1 = now();
            if (nofork) {
                run_in_child(t);
            } else {
                fflush(NULL);
                pid = fork();
                if (pid < 0) {
                    perror("fork");
                    return 2;
                }
                if (pid == 0) {
                    run_in_child(t);
                    exit(0); /* LeakSanitizer runs here */
                }
                waitpid(pid, &status, 0);
            }
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                passed++;
                printf("ok   %-58s %6.3fs\n", t->name, now() - t1);
            } else {
                failed++;
                if (WIFSIGNALED(status))
                    printf("FAIL %s: killed by signal %d\n", t->name, WTERMSIG(status));
                else
                    printf("FAIL %s: exit status %d\n", t->name, WEXITSTATUS(status));
            }
        }
    }
    if (argc > 1 && strcmp(argv[1], "-l") == 0)
        return 0;
    printf("# %.1f s\n", now() - t0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
