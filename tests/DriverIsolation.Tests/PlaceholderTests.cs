namespace DriverIsolation.Tests; public class PlaceholderTests { [Xunit.Fact] public void T() => Xunit.Assert.Equal(2, 1+1); }
