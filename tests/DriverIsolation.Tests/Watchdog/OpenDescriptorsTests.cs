using System.Diagnostics;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

public sealed class OpenDescriptorsTests
{
    [Fact]
    public async Task CountOfAProcess_IsWhatItsFdDirectoryLists_FromOneStatOnKernelsThatGiveIt()
    {
        // A child whose descriptors stay put while both are counted: a shell that opens one more
        // file, says so, and waits for a line that never comes (it ends when its stdin closes).
        using var child = Process.Start(new ProcessStartInfo("sh", ["-c", "exec 3</dev/null; echo ready; read line"])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
        })!;
        try
        {
            Assert.Equal("ready", await child.StandardOutput.ReadLineAsync().Bounded());
            var listed = Directory.EnumerateFileSystemEntries($"/proc/{child.Id}/fd").Count();
            Assert.True(listed >= 4, $"{listed} descriptors listed"); // 0, 1, 2 and 3 at least
            Assert.Equal(listed, OpenDescriptors.Count(child.Id));
            Assert.Equal(listed, HostUsage.Of(child.Id)?.Handles);

            // Linux 6.2 and later give the count as the directory's size: one system call.
            if (Environment.OSVersion.Version >= new Version(6, 2))
            {
                Assert.Equal(listed, OpenDescriptors.FromDirectorySize(child.Id));
            }
        }
        finally
        {
            child.Kill(entireProcessTree: true);
            await child.WaitForExitAsync().Bounded();
        }

        // Once it is gone: no count, and no usage.
        Assert.Null(OpenDescriptors.FromDirectorySize(child.Id));
        Assert.Throws<DirectoryNotFoundException>(() => OpenDescriptors.Count(child.Id));
        Assert.Null(HostUsage.Of(child.Id));
    }
}
