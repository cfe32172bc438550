using System.Runtime.CompilerServices;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace DriverIsolation.DriverHost;

/// <summary>
/// OpenTelemetry export over OTLP (HTTP/protobuf), off unless <see cref="EndpointVariable"/> names
/// a collector: the kernel (<c>drviso --otlp</c>) sets it, and every host it starts inherits it, so
/// each process exports its own spans (the kernel's IRP activities, the hosts' stays, linked by the
/// trace context in the dispatch frame) and the kernel its metrics. Nothing of OpenTelemetry is
/// loaded while it is off.
/// </summary>
public static class OtlpExport
{
    /// <summary>The collector's base address, e.g. http://localhost:4318.</summary>
    public const string EndpointVariable = "DRVISO_OTLP_ENDPOINT";

    /// <summary>Starts exporting the given activity sources and meters as <paramref name="serviceName"/>
    /// if <see cref="EndpointVariable"/> is set; null otherwise. Disposing flushes what is left.</summary>
    public static IDisposable? FromEnvironment(string serviceName, string[] activitySources, string[] meters)
    {
        var endpoint = Environment.GetEnvironmentVariable(EndpointVariable);
        return string.IsNullOrWhiteSpace(endpoint) || !Uri.TryCreate(endpoint, UriKind.Absolute, out var uri)
            ? null
            : Start(uri, serviceName, activitySources, meters);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Providers Start(Uri endpoint, string serviceName, string[] activitySources, string[] meters)
    {
        var resource = ResourceBuilder.CreateDefault().AddService(serviceName, serviceInstanceId: Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var tracer = Sdk.CreateTracerProviderBuilder()
            .SetResourceBuilder(resource)
            .AddSource(activitySources)
            .AddOtlpExporter(o =>
            {
                o.Endpoint = new Uri(endpoint, "v1/traces");
                o.Protocol = OtlpExportProtocol.HttpProtobuf;

                // Spans leave every second (not every 5 s) while the process runs: what is left
                // for the flush at exit is small, and the exporter is warm by then (a host has 2 s
                // from the kernel's Shutdown to its exit).
                o.BatchExportProcessorOptions.ScheduledDelayMilliseconds = 1000;
            })
            .Build();
        var meter = meters.Length == 0
            ? null
            : Sdk.CreateMeterProviderBuilder()
                .SetResourceBuilder(resource)
                .AddMeter(meters)
                .AddOtlpExporter(o =>
                {
                    o.Endpoint = new Uri(endpoint, "v1/metrics");
                    o.Protocol = OtlpExportProtocol.HttpProtobuf;
                })
                .Build();
        return new Providers(tracer, meter);
    }

    private sealed class Providers(TracerProvider tracer, MeterProvider? meter) : IDisposable
    {
        public void Dispose()
        {
            tracer.Dispose();
            meter?.Dispose();
        }
    }
}
