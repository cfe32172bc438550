using System.Diagnostics;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

public sealed class OpenDescriptorsTests
{
    [Fact]
    public void CountOfAProcess_IsWhatItsFdDirectoryLists_FromOneStatOnKernelsThatGiveIt()
    {
        // A child whose descriptors stay put while both counts are taken: sleep, its three
        // standard streams redirected (pipes) and whatever else it was started with.
        using var child = Process.Start(new ProcessStartInfo("sleep", "600")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        try
        {
            var listed = Directory.EnumerateFileSystemEntries($"/proc/{child.Id}/fd").Count();
            Assert.True(listed >= 3, $"{listed} descriptors listed");
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
            child.WaitForExit();
        }

        // Once it is gone: no count, and no usage.
        Assert.Null(OpenDescriptors.FromDirectorySize(child.Id));
        Assert.Throws<DirectoryNotFoundException>(() => OpenDescriptors.Count(child.Id));
        Assert.Null(HostUsage.Of(child.Id));
    }
}
