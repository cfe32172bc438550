using Microsoft.Extensions.Logging;

namespace DriverIsolation;

/// <summary>A loaded driver: its dispatch table, its AddDevice and Unload routines, its parameters
/// (from the manifest) and a logger whose output reaches the kernel.</summary>
public sealed class DriverObject
{
    private readonly DispatchRoutine?[] _dispatch = new DispatchRoutine?[MajorFunctions.TableSize];

    internal DriverObject(string name, IReadOnlyDictionary<string, string> parameters, ILogger logger)
    {
        Name = name;
        Parameters = parameters;
        Logger = logger;
    }

    public string Name { get; }

    public IReadOnlyDictionary<string, string> Parameters { get; }

    public ILogger Logger { get; }

    public AddDeviceRoutine? AddDevice { get; set; }

    public Action<DriverObject>? Unload { get; set; }

    /// <summary>The dispatch routine for a major function (DriverObject->MajorFunction[...]).</summary>
    public DispatchRoutine? this[MajorFunction major]
    {
        get => _dispatch[(int)major];
        set => _dispatch[(int)major] = value;
    }
}
