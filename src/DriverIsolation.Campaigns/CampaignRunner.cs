using System.Diagnostics;
using System.Text.Json;

namespace DriverIsolation.Campaigns;

/// <summary>
/// Runs trials, each in a process of its own (the trial process boots the kernel: when an
/// in-kernel fault takes it down, this process records the crash and goes on), up to
/// <c>parallel</c> at a time. The trial process prints <c>fault-injected</c> the moment its fault
/// fires, <c>booted</c> once the kernel is up, and its verdict as the last line of JSON.
/// </summary>
public sealed class CampaignRunner(Scenario scenario, Func<TrialSpec, ProcessStartInfo> startInfo, int parallel, TimeSpan trialTimeout)
{
    public const string FaultLine = "fault-injected";
    public const string BootedLine = "booted";

    public async Task<IReadOnlyList<TrialVerdict>> RunAsync(IReadOnlyList<TrialSpec> trials, Action<TrialVerdict>? done = null, CancellationToken cancellationToken = default)
    {
        using var slots = new SemaphoreSlim(Math.Max(1, parallel));
        var tasks = trials.Select(async trial =>
        {
            await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var verdict = await RunOneAsync(trial, cancellationToken).ConfigureAwait(false);
                done?.Invoke(verdict);
                return verdict;
            }
            finally
            {
                slots.Release();
            }
        }).ToList();
        var verdicts = await Task.WhenAll(tasks).ConfigureAwait(false);
        return [.. verdicts.OrderBy(v => v.Index)];
    }

    private async Task<TrialVerdict> RunOneAsync(TrialSpec trial, CancellationToken cancellationToken)
    {
        var start = startInfo(trial);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}");
        var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        var timedOut = false;
        try
        {
            await process.WaitForExitAsync(cancellationToken).WaitAsync(trialTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            timedOut = true;
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }

        var output = await stdout.ConfigureAwait(false);
        var errors = await stderr.ConfigureAwait(false);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (!timedOut && process.ExitCode == 0 && lines.LastOrDefault(l => l.StartsWith('{')) is { } json)
        {
            return JsonSerializer.Deserialize<TrialVerdict>(json) ?? throw new InvalidDataException($"trial {trial.Index}: an empty verdict");
        }

        // The trial process died or hung: the kernel in it went down with the fault.
        var fault = TrialRunner.Resolve(scenario.Faults[trial.FaultIndex], trial.Seed);
        var devices = scenario.Workload.Devices;
        var reason = timedOut
            ? $"the kernel process did not finish within {trialTimeout.TotalSeconds:F0} s (hung): killed"
            : $"the kernel process died ({Describe(process.ExitCode)}){LastLine(errors)}";
        return new TrialVerdict
        {
            Index = trial.Index,
            Trial = trial.Trial,
            Seed = trial.Seed,
            Isolation = trial.IsolationName,
            Iommu = trial.IommuName,
            Fault = fault.Type,
            Driver = fault.Driver,
            FaultFired = lines.Contains(FaultLine),
            SystemSurvived = false,
            Crash = reason,
            Booted = lines.Contains(BootedLine),
            SafeMode = false,
            FaultyDeviceHurt = true,
            InnocentDevices = CountInnocent(devices, fault.Driver),
            InnocentDevicesHurt = CountInnocent(devices, fault.Driver),
            IrpsLost = 0,
            DataVerified = true,
            Restarts = 0,
            Quarantined = false,
            IommuFaults = 0,
            IrpsFailed = 0,
            Hung = timedOut,
            Devices = [],
            Note = "no verdict from the trial process: every device counts as hurt",
        };
    }

    private int CountInnocent(IReadOnlyList<string> devices, string faultyDriver)
    {
        var faulty = scenario.DevicesOf(faultyDriver);
        return devices.Count(d => !faulty.Contains(d));
    }

    private static string Describe(int exitCode) => exitCode switch
    {
        134 => "SIGABRT: a fail-fast or a stack overflow",
        139 => "SIGSEGV",
        137 => "SIGKILL",
        _ => $"exit code {exitCode}",
    };

    private static string LastLine(string errors)
    {
        var line = errors.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault();
        return line is null ? "" : $": {(line.Length > 200 ? line[..200] : line)}";
    }
}
