using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/DriverIsolation.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
