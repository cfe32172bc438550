using System.Globalization;
using System.Runtime.CompilerServices;
using DriverIsolation.Hardware;
using DriverIsolation.Protocol;

namespace DriverIsolation.DriverHost;

/// <summary>The faults the shim can inject; docs/campaigns.md says what each one does.</summary>
public static class FaultTypes
{
    public static readonly IReadOnlyList<string> All =
    [
        "unhandled-exception", "fail-fast", "stack-overflow", "hang", "infinite-loop", "slow-completion",
        "wrong-status", "garbage-information", "double-completion", "foreign-completion", "memory-leak",
        "malformed-frame", "corrupt-content-update", "wild-dma-kernel", "wild-dma-other-driver", "wild-dma-unmapped",
        "dma-after-unmap", "wild-write",
    ];

    /// <summary>Faults that program the driver's block device to DMA where it must not: they act
    /// only on a driver bound to block hardware.</summary>
    public static readonly IReadOnlySet<string> Dma = new HashSet<string>(StringComparer.Ordinal)
    {
        "wild-dma-kernel", "wild-dma-other-driver", "wild-dma-unmapped", "dma-after-unmap",
    };

    /// <summary>Faults aimed at an address the kernel fills in when it sends the plan (parameter
    /// "address": a kernel structure, another driver's DMA window).</summary>
    public static readonly IReadOnlySet<string> Aimed = new HashSet<string>(StringComparer.Ordinal)
    {
        "wild-dma-kernel", "wild-dma-other-driver", "wild-write",
    };

    /// <summary>In a scenario: one of the faults that act on requests, chosen per trial from the
    /// trial's seed (the Nooks and MINIX 3 experiments injected random faults this way).</summary>
    public const string Random = "random";
}

/// <summary>
/// Injects faults into a driver without changing its code, steered by the fault plan the kernel
/// sends with LoadDriver (campaigns, <c>drviso run</c>). It sits between the runtime and the
/// driver: faults triggered on load act in place of DriverEntry; the others wrap the driver's
/// dispatch routines and act when their trigger fires for a request (Read, Write, DeviceControl,
/// FlushBuffers: opens and closes are not counted). Before a fault acts, the kernel is told
/// (<see cref="IKernelLink.FaultInjected"/>), so a campaign can time detection and recovery from
/// the moment of injection. The same shim runs in a host process and in-kernel: there the
/// faults act on the kernel's own threads, which is the point of comparing the two.
/// </summary>
internal sealed class FaultShim
{
    private const int LeakChunk = 4 << 20;
    private readonly int _driverId;
    private readonly string _driverName;
    private readonly IKernelLink _link;
    private readonly bool _injectable;
    private volatile Armed[] _faults;
    private readonly long _loadedAt = Environment.TickCount64;
    private readonly List<byte[]> _leaked = [];
    private readonly List<FaultyBlockHardware> _hardware = [];
    private readonly List<(string Fault, ulong? Address)> _armedAtLoad = [];
    private long _requests;

    /// <param name="injectable">Stand between the driver and its requests and hardware even
    /// with no fault planned, so that <see cref="Arm"/> can add one later.</param>
    public FaultShim(int driverId, string driverName, IReadOnlyList<FaultSpec> faults, IKernelLink link, bool injectable = false)
    {
        _driverId = driverId;
        _driverName = driverName;
        _link = link;
        _injectable = injectable;
        _faults = [.. faults.Select(f => new Armed(f))];
    }

    /// <summary>Adds a fault to the plan of the running driver (<c>drviso inject</c>). A
    /// "requests" trigger counts from now: 0 fires on the next request.</summary>
    public void Arm(FaultSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var armed = new Armed(spec.Trigger == "requests" ? spec with { Value = spec.Value + Interlocked.Read(ref _requests) } : spec);
        lock (_hardware)
        {
            _faults = [.. _faults, armed];
        }
    }

    /// <summary>Faults that act at load, in place of DriverEntry. Returns normally if none fires.</summary>
    public void OnLoad()
    {
        foreach (var fault in _faults.Where(f => f.Spec.Trigger == "load" && CanAct(f, atLoad: true)))
        {
            Fire(fault, "at load");
            Act(fault, irp: null, original: null);
        }
    }

    /// <summary>Puts the shim between the driver and a device's hardware when the plan has a DMA
    /// fault and the device is a block device; otherwise the hardware as it is.</summary>
    public IDeviceHardware Wrap(IDeviceHardware hardware)
    {
        ArgumentNullException.ThrowIfNull(hardware);
        if (hardware.Kind != "block" || (!_injectable && !_faults.Any(f => FaultTypes.Dma.Contains(f.Spec.Fault))))
        {
            return hardware;
        }

        var faulty = new FaultyBlockHardware(hardware);
        lock (_hardware)
        {
            _hardware.Add(faulty);
            foreach (var (fault, address) in _armedAtLoad)
            {
                faulty.Arm(fault, address);
            }
        }

        return faulty;
    }

    /// <summary>Whether a fault can act at all: a DMA fault needs block hardware to program (at
    /// load, it arms the hardware the driver is given next), an aimed fault needs its address.</summary>
    private bool CanAct(Armed fault, bool atLoad = false)
    {
        if (FaultTypes.Aimed.Contains(fault.Spec.Fault) && Address(fault.Spec) is null)
        {
            return false;
        }

        if (!FaultTypes.Dma.Contains(fault.Spec.Fault) || atLoad)
        {
            return true;
        }

        lock (_hardware)
        {
            return _hardware.Count > 0;
        }
    }

    /// <summary>Wraps every dispatch routine the driver set (and the default handling of the
    /// counted functions) so the plan sees each request first.</summary>
    public void Install(DriverObject driver)
    {
        if (!_injectable && _faults.All(f => f.Spec.Trigger == "load"))
        {
            return;
        }

        foreach (var major in new[] { MajorFunction.Read, MajorFunction.Write, MajorFunction.DeviceControl, MajorFunction.FlushBuffers })
        {
            var original = driver[major];
            driver[major] = (device, irp) => OnRequest(device, irp, original);
        }
    }

    private NtStatus OnRequest(DeviceObject device, Irp irp, DispatchRoutine? original)
    {
        var count = Interlocked.Increment(ref _requests);
        foreach (var fault in _faults)
        {
            if (CanAct(fault) && fault.ShouldFire(count, Environment.TickCount64 - _loadedAt))
            {
                Fire(fault, $"on {irp.MajorFunction} IRP {irp.Id} (request {count} since load)");
                return Act(fault, irp, original);
            }
        }

        if (_leaked.Count > 0)
        {
            Leak(fault: null);
        }

        return Forward(device, irp, original);
    }

    private void Fire(Armed fault, string when) =>
        _link.FaultInjected(_driverId, fault.Spec.Index, fault.Spec.Fault,
            $"{fault.Spec.Fault} in {_driverName} {when}{(Address(fault.Spec) is { } address ? $", aimed at 0x{address:x}" : "")}");

    private NtStatus Act(Armed fault, Irp? irp, DispatchRoutine? original)
    {
        var spec = fault.Spec;
        switch (spec.Fault)
        {
            case "unhandled-exception":
                throw new InvalidOperationException($"injected fault: unhandled exception in {_driverName}");
            case "fail-fast":
                Environment.FailFast($"injected fault: fail-fast in {_driverName}");
                return NtStatus.Unsuccessful;
            case "stack-overflow":
                return Recurse(1);
            case "corrupt-content-update":
                // The interpreter expects 21 fields; the update has 20: it reads one past the end.
                var template = new long[20];
                var index = 20;
                return template[index] == 0 ? NtStatus.Unsuccessful : NtStatus.Success;
            case "hang":
                irp?.MarkPending();
                return NtStatus.Pending; // never completed
            case "infinite-loop":
                while (true)
                {
                    Thread.SpinWait(1000);
                }

            case "memory-leak":
                Leak(fault);
                break;
            case "wild-dma-kernel" or "wild-dma-other-driver" or "wild-dma-unmapped" or "dma-after-unmap":
                // The next transfer the driver queues goes where the fault says; the request that
                // fired it goes on to the driver as usual.
                lock (_hardware)
                {
                    if (irp is null)
                    {
                        _armedAtLoad.Add((spec.Fault, Address(spec)));
                    }

                    foreach (var hardware in _hardware)
                    {
                        hardware.Arm(spec.Fault, Address(spec));
                    }
                }

                break;
            case "wild-write":
                WildWrite(Address(spec)!.Value);
                break;
            case "malformed-frame":
                _link.SendMalformedFrame([0xFF, 0xFF, 0xFF, 0x7F, 0xC1, 0xC1, 0xC1, 0xC1]);
                break;
            case "slow-completion" when irp is not null:
                var delay = TimeSpan.FromMilliseconds(Parameter(spec, "delayMs", 2000));
                irp.MarkPending();
                _ = Task.Delay(delay).ContinueWith(_ => Forward(irp.Device, irp, original), TaskScheduler.Default);
                return NtStatus.Pending;
            case "wrong-status" when irp is not null:
                irp.Complete(NtStatus.InvalidDeviceState);
                return NtStatus.InvalidDeviceState;
            case "garbage-information" when irp is not null:
                // Success, claiming far more data than the request's buffer holds.
                irp.Complete(NtStatus.Success, irp.OutputBuffer.Length + irp.InputBuffer.Length + 1_000_000);
                return NtStatus.Success;
            case "double-completion" when irp is not null:
                irp.Complete(NtStatus.Success, 0);
                return Forward(irp.Device, irp, original);
            case "foreign-completion" when irp is not null:
                // An IRP this driver never held: the next one the kernel will number.
                _link.Complete(irp.Id + 1, irp.Device.Id, NtStatus.Success, 0, ReadOnlyMemory<byte>.Empty);
                break;
        }

        return irp is null ? NtStatus.Success : Forward(irp.Device, irp, original);
    }

    /// <summary>Grows the driver's memory by a chunk a request (touched, so it is resident) until
    /// the host's budget kills it; in-kernel, until a cap, since nothing else stops it there.</summary>
    private void Leak(Armed? fault)
    {
        var cap = (long)Parameter(fault?.Spec, "capMb", 512) << 20;
        if ((long)_leaked.Count * LeakChunk >= cap)
        {
            return;
        }

        var chunk = GC.AllocateUninitializedArray<byte>(LeakChunk);
        for (var i = 0; i < chunk.Length; i += 4096)
        {
            chunk[i] = 1;
        }

        _leaked.Add(chunk);
    }

    /// <summary>A CPU store into kernel memory. In-kernel the kernel's memory is this process's
    /// memory and the store lands; a host process has no mapping of it (the kernel region's
    /// addresses are below the lowest address a process may map), so the same store faults and the
    /// host dies as a real one does on a bad pointer.</summary>
    private void WildWrite(ulong address)
    {
        const ulong Scribble = 0xDEAD_BEEF_DEAD_BEEF;
        if (_link.WriteKernelMemory(address, Scribble))
        {
            return;
        }

        unsafe
        {
            *(ulong*)(nuint)address = Scribble;
        }
    }

    private static ulong? Address(FaultSpec spec) =>
        spec.Parameters.TryGetValue("address", out var text) && text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            && ulong.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var address)
            ? address
            : null;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static NtStatus Recurse(int depth)
    {
        Span<byte> frame = stackalloc byte[256];
        frame[depth % frame.Length] = (byte)depth;
        return Recurse(depth + 1) == NtStatus.Success && frame[0] == 0 ? NtStatus.Success : NtStatus.Unsuccessful;
    }

    private static NtStatus Forward(DeviceObject device, Irp irp, DispatchRoutine? original)
    {
        if (original is not null)
        {
            return original(device, irp);
        }

        DriverRuntime.DispatchDefault(device, irp);
        return NtStatus.Pending;
    }

    private static double Parameter(FaultSpec? spec, string name, double fallback) =>
        spec?.Parameters.TryGetValue(name, out var text) == true && double.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, out var value)
            ? value
            : fallback;

    /// <summary>A fault of the plan and its trigger state.</summary>
    private sealed class Armed(FaultSpec spec)
    {
        private readonly Random _random = new(spec.Seed);
        private int _fired;

        public FaultSpec Spec { get; } = spec;

        public bool ShouldFire(long request, long sinceLoadMs)
        {
            if (!Spec.Repeat && Volatile.Read(ref _fired) != 0)
            {
                return false;
            }

            var due = Spec.Trigger switch
            {
                "requests" => request > (long)Spec.Value,
                "time" => sinceLoadMs >= Spec.Value,
                "probability" => Draw() < Spec.Value,
                _ => false,
            };
            return due && (Spec.Repeat || Interlocked.Exchange(ref _fired, 1) == 0);
        }

        private double Draw()
        {
            lock (_random)
            {
                return _random.NextDouble();
            }
        }
    }
}
