namespace DriverIsolation.Tests;

/// <summary>Tests that boot kernels with host processes run one class at a time: the machine has
/// two cores, and a dozen hosts starting at once only make every await slower.</summary>
[CollectionDefinition("processes")]
public sealed class ProcessCollection;
