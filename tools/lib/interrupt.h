// Ctrl-C (SIGINT) and SIGTERM (a scheduler's preemption) as a request to stop
// cleanly: the first signal sets a flag that training polls between optimizer
// steps, so it can save where it is and exit; a second one ends the process
// at once, as the default action would.
#pragma once

namespace kestrel::tools {

// Installs the handlers for its lifetime and restores the previous ones after;
// a signal the process was started ignoring stays ignored. Nests: only the
// outermost guard installs, clears the flag and restores.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};

// The signal that asked to stop (SIGINT or SIGTERM), 0 while none has.
int interrupt_signal();
// Forgets a request once it has been acted on.
void clear_interrupt();

}  // namespace kestrel::tools
