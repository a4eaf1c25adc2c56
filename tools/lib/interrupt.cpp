#include "tools/lib/interrupt.h"

#include <unistd.h>

#include <csignal>

namespace kestrel::tools {

namespace {

volatile std::sig_atomic_t g_signal = 0;
int g_depth = 0;  // nested guards; only touched outside signal handlers
struct sigaction g_previous_int, g_previous_term;

extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0) {  // asked twice: stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
  static const char note[] = "\nkestrel: stopping after this step to save the run (again to stop at once)\n";
  const ssize_t ignored = write(STDERR_FILENO, note, sizeof(note) - 1);  // async-signal-safe, unlike iostreams
  (void)ignored;
}

}  // namespace

InterruptGuard::InterruptGuard() {
  if (g_depth++ > 0) return;
  g_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and waits carry on; the loop polls the flag
  sigaction(SIGINT, &action, &g_previous_int);
  sigaction(SIGTERM, &action, &g_previous_term);
  // A signal ignored on entry stays ignored (as Python does): a job a script
  // started in the background must not stop on the terminal's Ctrl-C.
  if (g_previous_int.sa_handler == SIG_IGN) sigaction(SIGINT, &g_previous_int, nullptr);
  if (g_previous_term.sa_handler == SIG_IGN) sigaction(SIGTERM, &g_previous_term, nullptr);
}

InterruptGuard::~InterruptGuard() {
  if (--g_depth > 0) return;
  sigaction(SIGINT, &g_previous_int, nullptr);
  sigaction(SIGTERM, &g_previous_term, nullptr);
  g_signal = 0;
}

int interrupt_signal() { return g_signal; }

void clear_interrupt() { g_signal = 0; }

}  // namespace kestrel::tools
