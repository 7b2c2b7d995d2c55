/* Stand-in for QEMU's qemu/error-report.h. */
#ifndef STUB_QEMU_ERROR_REPORT_H
#define STUB_QEMU_ERROR_REPORT_H
void error_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
