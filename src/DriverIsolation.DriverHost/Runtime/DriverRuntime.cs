using System.Collections.Concurrent;
using System.Reflection;
using DriverIsolation.Hardware;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.DriverHost;

/// <summary>
/// Where drivers live: loads them, creates their device objects, and turns kernel requests into
/// calls on the drivers' routines. The same runtime serves a drvhost process (behind a pipe) and
/// the kernel's own process (in-kernel isolation, direct calls). It keeps one driver-side IRP per
/// (IRP, layer) it holds; exactly-once is checked by the kernel, so every completion is forwarded.
/// An exception from a driver routine is not caught here: in a host it crashes the host, as an
/// unhandled exception in a real driver host does; in-kernel, the kernel decides.
/// </summary>
public sealed class DriverRuntime : IDeviceStackPort
{
    private readonly IKernelLink _link;
    private readonly Func<int, string, ILogger> _loggerFor;
    private readonly ConcurrentDictionary<int, LoadedDriver> _drivers = new();
    private readonly ConcurrentDictionary<int, DeviceObject> _devices = new();
    // The IRPs drivers here hold, per layer: a plain dictionary under a lock, whose entries are
    // reused (a concurrent dictionary allocates a node for every IRP).
    private readonly Dictionary<(long IrpId, int DeviceId), Irp> _irps = [];
    private readonly Lock _irpsGate = new();

    /// <param name="link">Completions, pass-downs and logs go here.</param>
    /// <param name="loggerFor">Makes the logger a driver sees, from its id and name.</param>
    public DriverRuntime(IKernelLink link, Func<int, string, ILogger> loggerFor)
    {
        _link = link;
        _loggerFor = loggerFor;
    }

    /// <summary>Arms a fault in a loaded driver's shim (it was loaded injectable, or with a plan).
    /// Returns why not, or null when armed.</summary>
    public string? ArmFault(int driverId, Protocol.FaultSpec fault)
    {
        if (!_drivers.TryGetValue(driverId, out var driver))
        {
            return $"no driver with id {driverId} is loaded here";
        }

        if (driver.Shim is not { } shim)
        {
            return $"{driver.DriverObject.Name} was not loaded with the fault shim";
        }

        shim.Arm(fault);
        return null;
    }

    /// <summary>The name of the driver a device here belongs to, or null if it is not here.</summary>
    public string? DriverNameOf(int deviceId) => _devices.TryGetValue(deviceId, out var device) ? device.Driver.Name : null;

    /// <summary>IRPs (per layer) that drivers here hold right now.</summary>
    public int OutstandingIrps
    {
        get
        {
            lock (_irpsGate)
            {
                return _irps.Count;
            }
        }
    }

    // Drivers a warm host loaded ahead of time (PrepareDriver), by name.
    private readonly Dictionary<string, PreparedDriver> _prepared = new(StringComparer.Ordinal);

    private sealed record PreparedDriver(string AssemblyPath, string? TypeName, DriverLoadContext Context, Type DriverType);

    /// <summary>The detail of a successful load that used what was prepared ahead of time.</summary>
    public const string LoadedAhead = "loaded ahead of time";

    /// <summary>Drivers loaded ahead of time and not used yet.</summary>
    public int PreparedDrivers => _prepared.Count;

    /// <summary>How many drivers were loaded from what was prepared ahead of time.</summary>
    public int LoadsFromPrepared { get; private set; }

    /// <summary>Loads a driver's assembly into its own load context and compiles the methods of
    /// its driver type and of the types nested in it, running none of its code (no DriverEntry,
    /// no constructor), so that a
    /// <see cref="LoadDriver(int, string, string, string?, IReadOnlyDictionary{string, string}, IReadOnlyList{Protocol.FaultSpec}?, bool)"/>
    /// of it later is quick. Returns why not, or null.</summary>
    public string? PrepareDriver(string name, string assemblyPath, string? typeName)
    {
        if (_prepared.ContainsKey(name) || !File.Exists(assemblyPath))
        {
            return _prepared.ContainsKey(name) ? $"{name} is prepared already" : $"driver assembly not found: {assemblyPath}";
        }

        var context = new DriverLoadContext(name, assemblyPath);
        try
        {
            var assembly = context.LoadFromAssemblyPath(Path.GetFullPath(assemblyPath));
            var driverType = FindDriverType(assembly, typeName);
            foreach (var type in WithNestedTypes(driverType))
            {
                if (type.ContainsGenericParameters)
                {
                    continue;
                }

                foreach (var method in type.GetMethods(BindingFlags.DeclaredOnly | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static))
                {
                    if (!method.IsAbstract && !method.ContainsGenericParameters && method.GetMethodBody() is not null)
                    {
                        System.Runtime.CompilerServices.RuntimeHelpers.PrepareMethod(method.MethodHandle);
                    }
                }
            }

            _prepared[name] = new PreparedDriver(assemblyPath, typeName, context, driverType);
            return null;
        }
#pragma warning disable CA1031 // Preparing is an optimisation: whatever fails, the load will do it all (and report it).
        catch (Exception ex)
#pragma warning restore CA1031
        {
            context.Unload();
            return $"cannot prepare {name}: {ex.Message}";
        }
    }

    /// <summary>Loads a driver assembly into its own load context and runs DriverEntry.
    /// Loader errors come back as a status; an exception thrown by DriverEntry propagates.</summary>
    public (NtStatus Status, string? Detail) LoadDriver(int driverId, string name, string assemblyPath, string? typeName,
        IReadOnlyDictionary<string, string> parameters, IReadOnlyList<Protocol.FaultSpec>? faults = null, bool injectable = false)
    {
        if (_drivers.ContainsKey(driverId))
        {
            return (NtStatus.InvalidParameter, $"driver id {driverId} is already loaded");
        }

        if (!File.Exists(assemblyPath))
        {
            return (NtStatus.ObjectNameNotFound, $"driver assembly not found: {assemblyPath}");
        }

        DriverLoadContext context;
        Type driverType;
        var ahead = false;
        if (TakePrepared(name, assemblyPath, typeName) is { } prepared)
        {
            (context, driverType) = (prepared.Context, prepared.DriverType);
            LoadsFromPrepared++;
            ahead = true;
        }
        else
        {
            context = new DriverLoadContext(name, assemblyPath);
            try
            {
                var assembly = context.LoadFromAssemblyPath(Path.GetFullPath(assemblyPath));
                driverType = FindDriverType(assembly, typeName);
            }
            catch (Exception ex) when (ex is BadImageFormatException or FileLoadException or TypeLoadException or ReflectionTypeLoadException or InvalidOperationException)
            {
                context.Unload();
                return (NtStatus.InvalidParameter, $"cannot load driver {name} from {assemblyPath}: {ex.Message}");
            }
        }

        var driver = (IDriver)Activator.CreateInstance(driverType)!;
        var driverObject = new DriverObject(name, parameters, _loggerFor(driverId, name));
        var (status, shim) = Enter(driverId, name, driver, driverObject, faults, injectable);
        if (!status.IsSuccess())
        {
            context.Unload();
            return (status, $"DriverEntry of {name} returned {status}");
        }

        _drivers[driverId] = new LoadedDriver(driverId, driverObject, context, shim);
        return (NtStatus.Success, ahead ? LoadedAhead : null);
    }

    /// <summary>The prepared load of this driver, if it matches; every other prepared driver is
    /// dropped (a host serves the driver it was taken for).</summary>
    private PreparedDriver? TakePrepared(string name, string assemblyPath, string? typeName)
    {
        PreparedDriver? match = null;
        foreach (var (preparedName, prepared) in _prepared)
        {
            if (match is null && preparedName == name && prepared.AssemblyPath == assemblyPath && prepared.TypeName == typeName)
            {
                match = prepared;
                continue;
            }

            prepared.Context.Unload();
        }

        _prepared.Clear();
        return match;
    }

    /// <summary>Registers a driver object that is already in this process (tests, and drivers
    /// compiled into a host) instead of loading an assembly.</summary>
    public (NtStatus Status, string? Detail) LoadDriver(int driverId, string name, IDriver driver, IReadOnlyDictionary<string, string> parameters,
        IReadOnlyList<Protocol.FaultSpec>? faults = null)
    {
        ArgumentNullException.ThrowIfNull(driver);
        var driverObject = new DriverObject(name, parameters, _loggerFor(driverId, name));
        var (status, shim) = Enter(driverId, name, driver, driverObject, faults);
        if (!status.IsSuccess())
        {
            return (status, $"DriverEntry of {name} returned {status}");
        }

        return _drivers.TryAdd(driverId, new LoadedDriver(driverId, driverObject, null, shim))
            ? (NtStatus.Success, null)
            : (NtStatus.InvalidParameter, $"driver id {driverId} is already loaded");
    }

    /// <summary>DriverEntry, behind the fault shim when the kernel sent a fault plan: load faults
    /// act in its place, the others wrap the dispatch table it filled in.</summary>
    private (NtStatus Status, FaultShim? Shim) Enter(int driverId, string name, IDriver driver, DriverObject driverObject, IReadOnlyList<Protocol.FaultSpec>? faults,
        bool injectable = false)
    {
        if (faults is not { Count: > 0 } && !injectable)
        {
            return (driver.DriverEntry(driverObject), null);
        }

        var shim = new FaultShim(driverId, name, faults ?? [], _link, injectable);
        shim.OnLoad();
        var status = driver.DriverEntry(driverObject);
        if (status.IsSuccess())
        {
            shim.Install(driverObject);
        }

        return (status, shim);
    }

    /// <summary>Creates a device object for a loaded driver and runs its AddDevice.</summary>
    public (NtStatus Status, string? Detail) AddDevice(int driverId, int deviceId, string name, DeviceType deviceType,
        bool hasLowerDevice, IReadOnlyDictionary<string, string> parameters, Protocol.HardwareBinding? hardware = null)
    {
        if (!_drivers.TryGetValue(driverId, out var driver))
        {
            return (NtStatus.InvalidParameter, $"no driver with id {driverId} is loaded here");
        }

        var device = new DeviceObject(this, deviceId, name, deviceType, driver.DriverObject, hasLowerDevice, parameters);
        if (!_devices.TryAdd(deviceId, device))
        {
            return (NtStatus.InvalidParameter, $"device id {deviceId} exists already");
        }

        if (hardware is not null)
        {
            try
            {
                IDeviceHardware real = new HostDeviceHardware(deviceId, hardware, _link);
                device.Hardware = driver.Shim?.Wrap(real) ?? real;
            }
            catch (IOException ex)
            {
                _devices.TryRemove(deviceId, out _);
                return (NtStatus.DeviceNotReady, $"cannot map the DMA window of {name}: {ex.Message}");
            }
        }

        var status = driver.DriverObject.AddDevice?.Invoke(driver.DriverObject, device) ?? NtStatus.Success;
        if (!status.IsSuccess())
        {
            _devices.TryRemove(deviceId, out _);
            return (status, $"AddDevice of {driver.DriverObject.Name} for {name} returned {status}");
        }

        return (NtStatus.Success, null);
    }

    /// <summary>Hands one IRP to the driver of one stack layer, on the caller's thread.</summary>
    public void Dispatch(long irpId, int deviceId, MajorFunction majorFunction, byte minorFunction, long fileId,
        long offset, int length, uint ioControlCode, Memory<byte> input, Memory<byte> output)
    {
        var irp = Accept(irpId, deviceId, majorFunction, minorFunction, fileId, offset, length, ioControlCode, input, output);
        if (irp is not null)
        {
            Invoke(irp);
        }
    }

    /// <summary>
    /// First half of a dispatch: registers the IRP so that a Cancel arriving before the driver runs
    /// is not lost (the driver then finds it cancelled). Returns null, having completed the IRP
    /// with InvalidDeviceRequest, if the device is not here.
    /// </summary>
    public Irp? Accept(long irpId, int deviceId, MajorFunction majorFunction, byte minorFunction, long fileId,
        long offset, int length, uint ioControlCode, Memory<byte> input, Memory<byte> output)
    {
        if (!_devices.TryGetValue(deviceId, out var device))
        {
            _link.Complete(irpId, deviceId, NtStatus.InvalidDeviceRequest, 0, ReadOnlyMemory<byte>.Empty);
            return null;
        }

        var irp = new Irp(this, device, irpId, majorFunction, minorFunction, fileId, offset, length, ioControlCode, input, output);
        lock (_irpsGate)
        {
            _irps[(irpId, deviceId)] = irp;
        }

        return irp;
    }

    /// <summary>Second half of a dispatch: runs the driver's routine for the IRP.</summary>
    public static void Invoke(Irp irp)
    {
        ArgumentNullException.ThrowIfNull(irp);
        var routine = irp.Device.Driver[irp.MajorFunction];
        if (routine is not null)
        {
            routine(irp.Device, irp);
            return;
        }

        DispatchDefault(irp.Device, irp);
    }

    /// <summary>Asks the driver to cancel an IRP it holds (runs its cancel routine, if any).</summary>
    public void Cancel(long irpId, int deviceId)
    {
        Irp? irp;
        lock (_irpsGate)
        {
            _irps.TryGetValue((irpId, deviceId), out irp);
        }

        irp?.RequestCancel();
    }

    /// <summary>The lower layer completed an IRP this layer passed down with a completion routine.</summary>
    public void LowerCompleted(long irpId, int deviceId, NtStatus status, long information, ReadOnlySpan<byte> data)
    {
        Irp? irp;
        lock (_irpsGate)
        {
            if (!_irps.TryGetValue((irpId, deviceId), out irp))
            {
                return;
            }
        }

        var output = irp.OutputBuffer.Span;
        data[..Math.Min(data.Length, output.Length)].CopyTo(output);
        if (!irp.InvokeCompletionRoutine(new IoResult(status, information)))
        {
            irp.Complete(status, information);
        }
    }

    /// <summary>Runs every driver's Unload routine and releases their load contexts.</summary>
    public void UnloadAll()
    {
        foreach (var driver in _drivers.Values)
        {
            driver.DriverObject.Unload?.Invoke(driver.DriverObject);
            driver.LoadContext?.Unload();
        }

        foreach (var device in _devices.Values)
        {
            ((device.Hardware is FaultyBlockHardware faulty ? faulty.Inner : device.Hardware) as IDisposable)?.Dispose();
        }

        _drivers.Clear();
        _devices.Clear();
    }

    /// <summary>A device interrupted: its driver's interrupt service routine runs on this thread.</summary>
    public void Interrupt(int deviceId, int vector)
    {
        if (_devices.TryGetValue(deviceId, out var device) && (device.Hardware is FaultyBlockHardware faulty ? faulty.Inner : device.Hardware) is HostDeviceHardware hardware)
        {
            hardware.Interrupt(vector);
        }
    }

    void IDeviceStackPort.Complete(Irp irp, NtStatus status, long information)
    {
        lock (_irpsGate)
        {
            _irps.Remove((irp.Id, irp.Device.Id));
        }

        var data = ReadOnlyMemory<byte>.Empty;
        if (irp.MajorFunction.ReturnsData() && information > 0)
        {
            data = irp.OutputBuffer[..(int)Math.Min(information, irp.OutputBuffer.Length)];
        }

        _link.Complete(irp.Id, irp.Device.Id, status, information, data);
    }

    void IDeviceStackPort.PassDown(DeviceObject device, Irp irp, bool wantsCompletion)
    {
        if (!wantsCompletion)
        {
            lock (_irpsGate)
            {
                _irps.Remove((irp.Id, device.Id));
            }
        }

        _link.PassDown(irp.Id, device.Id, wantsCompletion, irp.Offset, irp.Length, irp.InputBuffer);
    }

    /// <summary>What a major function without a routine does: filters pass it down, open and
    /// close succeed, anything else is not supported by the device.</summary>
    internal static void DispatchDefault(DeviceObject device, Irp irp)
    {
        if (device.HasLowerDevice)
        {
            device.CallLowerDriver(irp);
            return;
        }

        var status = irp.MajorFunction is MajorFunction.Create or MajorFunction.Cleanup or MajorFunction.Close
            ? NtStatus.Success
            : NtStatus.InvalidDeviceRequest;
        irp.Complete(status);
    }

    /// <summary>The driver type and the types nested in it (where the compiler puts its lambdas
    /// and iterators): what a restart runs first. The rest of a large driver's assembly is
    /// compiled as it is used, not by every warm host ahead of time.</summary>
    private static IEnumerable<Type> WithNestedTypes(Type type)
    {
        yield return type;
        foreach (var nested in type.GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic))
        {
            foreach (var inner in WithNestedTypes(nested))
            {
                yield return inner;
            }
        }
    }

    private static Type FindDriverType(Assembly assembly, string? typeName)
    {
        if (typeName is not null)
        {
            var named = assembly.GetType(typeName, throwOnError: false)
                ?? throw new InvalidOperationException($"type {typeName} not found in {assembly.GetName().Name}");
            return typeof(IDriver).IsAssignableFrom(named) && !named.IsAbstract
                ? named
                : throw new InvalidOperationException($"type {typeName} does not implement {nameof(IDriver)}");
        }

        var candidates = assembly.GetExportedTypes()
            .Where(t => typeof(IDriver).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
            .ToArray();
        return candidates.Length switch
        {
            1 => candidates[0],
            0 => throw new InvalidOperationException($"{assembly.GetName().Name} has no public type implementing {nameof(IDriver)}"),
            _ => throw new InvalidOperationException(
                $"{assembly.GetName().Name} has {candidates.Length} driver types ({string.Join(", ", candidates.Select(c => c.Name))}); name one in the manifest's \"type\""),
        };
    }
}
