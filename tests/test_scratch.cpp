// temp_path's scratch folder: each test process removes its own at exit, so a
// CI run of ~1000 processes leaves nothing behind in /tmp.
#include "test_util.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <sys/wait.h>
#include <unistd.h>

namespace kestrel::testing {
namespace {

void write_file(const std::string& path) { std::ofstream(path) << "x"; }

// Runs `child` in a forked process that then exits normally (atexit handlers
// run); returns its exit code.
template <typename Fn>
int exit_code_of_child(Fn child) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    child();
    std::exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(TempPath, ScratchFolderGoesWithTheProcessThatMadeIt) {
  const std::string mine = temp_path("parent_file");
  write_file(mine);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  // A child with its own scratch file: gone once the child exits.
  ASSERT_EQ(exit_code_of_child([&] {
              const std::string folder = std::filesystem::path(temp_path("child_file")).parent_path().string();
              write_file(temp_path("child_file"));
              const bool written = std::filesystem::exists(temp_path("child_file"));
              const std::string message = (written ? "1" : "0") + folder;
              if (::write(pipe_fds[1], message.data(), message.size()) < 0) std::exit(3);
            }),
            0);
  ::close(pipe_fds[1]);
  char buf[4096];
  const ssize_t n = ::read(pipe_fds[0], buf, sizeof(buf));
  ::close(pipe_fds[0]);
  ASSERT_GT(n, 1);
  const std::string reply(buf, static_cast<size_t>(n));
  EXPECT_EQ(reply[0], '1') << "the child could not write its scratch file";
  const std::string child_folder = reply.substr(1);
  EXPECT_NE(child_folder, std::filesystem::path(mine).parent_path().string());
  EXPECT_FALSE(std::filesystem::exists(child_folder)) << child_folder << " outlived its process";
  // The parent's folder survives both children: the one above, and one that
  // never asked for a scratch path but inherited the exit handler.
  ASSERT_EQ(exit_code_of_child([] {}), 0);
  EXPECT_TRUE(std::filesystem::exists(mine)) << "a child's exit removed its parent's scratch folder";
}

}  // namespace
}  // namespace kestrel::testing
