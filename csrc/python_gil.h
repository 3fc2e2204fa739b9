// The GIL around long compiled calls, for the pybind11 bindings only.
//
// pybind11's gil_scoped_release takes the GIL back in a noexcept destructor.
// When the interpreter is finalising (the main thread has exited while a
// daemon thread is inside a segpost call), CPython ends a thread that asks for
// the GIL with pthread_exit, whose forced unwind through a noexcept frame
// calls std::terminate: the process aborts. ReleaseGil and check_signals
// never ask for the GIL once finalisation has begun: the thread parks until
// the process exits (as CPython 3.14 itself does). For the window in which
// finalisation begins while the thread waits for the GIL, ReleaseGil's
// destructor is noexcept(false), so the forced unwind passes through it.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <thread>

namespace segpost {

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// Blocks this thread until the process exits: it must never run Python again.
[[noreturn]] inline void park_until_exit() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

class ReleaseGil {
 public:
  ReleaseGil() : state_(PyEval_SaveThread()) {}
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;
  ~ReleaseGil() noexcept(false) {
    if (interpreter_finalizing()) park_until_exit();
    PyEval_RestoreThread(state_);
  }

 private:
  PyThreadState* state_;
};

// Called without the GIL between steps of a long computation (mean-field
// iterations): takes the GIL briefly and raises KeyboardInterrupt (or what a
// signal handler raised) as py::error_already_set if a signal arrived.
// Signals are handled on the main thread only; elsewhere this costs a GIL
// round trip and returns.
inline void check_signals() {
  if (interpreter_finalizing()) park_until_exit();
  pybind11::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
}

}  // namespace segpost
