using ScottPlot;

namespace DriverIsolation.Campaigns;

/// <summary>
/// The report's figures, each as PNG and SVG: the blast radius by isolation model (system
/// survival and innocent devices hurt, over every fault), the recovery-time CDF per isolation
/// model and IOMMU mode, and system survival by fault type and isolation model.
/// </summary>
public static class CampaignPlots
{
    private const int Width = 900;
    private const int Height = 560;

    private static readonly Color[] Palette =
    [
        Color.FromHex("#1f77b4"), Color.FromHex("#d62728"), Color.FromHex("#2ca02c"), Color.FromHex("#ff7f0e"),
        Color.FromHex("#9467bd"), Color.FromHex("#8c564b"), Color.FromHex("#e377c2"), Color.FromHex("#7f7f7f"),
    ];

    /// <summary>Writes blast-radius, recovery-cdf and survival-by-fault (.png and .svg); returns the file names.</summary>
    public static IReadOnlyList<string> Write(string directory, IReadOnlyList<TrialVerdict> verdicts)
    {
        var files = new List<string>();
        Save(BlastRadius(verdicts), directory, "blast-radius", files);
        Save(RecoveryCdf(verdicts), directory, "recovery-cdf", files);
        Save(SurvivalByFault(verdicts), directory, "survival-by-fault", files);
        return files;
    }

    private static Plot BlastRadius(IReadOnlyList<TrialVerdict> verdicts)
    {
        var cells = verdicts.GroupBy(v => $"{v.Isolation}\nIOMMU {v.Iommu}").ToList();
        var plot = new Plot();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (var i = 0; i < cells.Count; i++)
        {
            var list = cells[i].ToList();
            var innocent = list.Sum(v => v.InnocentDevices);
            var survival = 100.0 * list.Count(v => v.SystemSurvived) / list.Count;
            var hurt = innocent == 0 ? 0 : 100.0 * list.Sum(v => v.InnocentDevicesHurt) / innocent;
            bars.Add(new Bar { Position = (i * 3) + 0, Value = survival, FillColor = Palette[2] });
            bars.Add(new Bar { Position = (i * 3) + 1, Value = hurt, FillColor = Palette[1] });
            ticks.Add(new Tick((i * 3) + 0.5, cells[i].Key));
        }

        plot.Add.Bars(bars);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Axes.Margins(bottom: 0);
        plot.Axes.SetLimitsY(0, 120); // room above the bars for the legend
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "system survived", FillColor = Palette[2] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "innocent devices hurt", FillColor = Palette[1] });
        plot.ShowLegend(Alignment.UpperRight);
        plot.Title("Blast radius by isolation model (all faults)");
        plot.YLabel("% of trials / of innocent devices");
        return plot;
    }

    private static Plot RecoveryCdf(IReadOnlyList<TrialVerdict> verdicts)
    {
        var plot = new Plot();
        var cells = verdicts.Where(v => v.RecoveryMs is not null).GroupBy(v => $"{v.Isolation}, IOMMU {v.Iommu}").ToList();
        for (var i = 0; i < cells.Count; i++)
        {
            var times = cells[i].Select(v => v.RecoveryMs!.Value).Order().ToArray();
            var fractions = Enumerable.Range(1, times.Length).Select(k => 100.0 * k / times.Length).ToArray();
            var line = plot.Add.ScatterLine(times, fractions, Palette[i % Palette.Length]);
            line.ConnectStyle = ConnectStyle.StepHorizontal;
            line.LineWidth = 2;
            line.LegendText = $"{cells[i].Key} (n={times.Length})";
        }

        if (cells.Count == 0)
        {
            plot.Add.Annotation("no trial recovered a driver (nothing restarted)");
        }

        plot.ShowLegend(Alignment.LowerRight);
        plot.Title("Recovery time: fault injected to driver serving again");
        plot.XLabel("ms");
        plot.YLabel("% of recoveries");
        plot.Axes.SetLimitsY(0, 102);
        return plot;
    }

    private static Plot SurvivalByFault(IReadOnlyList<TrialVerdict> verdicts)
    {
        var faults = verdicts.Select(v => v.Fault).Distinct().ToList();
        var models = verdicts.Select(v => v.Isolation).Distinct().ToList();
        var plot = new Plot();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        var group = models.Count + 1;
        for (var f = 0; f < faults.Count; f++)
        {
            for (var m = 0; m < models.Count; m++)
            {
                var list = verdicts.Where(v => v.Fault == faults[f] && v.Isolation == models[m]).ToList();
                if (list.Count > 0)
                {
                    bars.Add(new Bar { Position = (f * group) + m, Value = 100.0 * list.Count(v => v.SystemSurvived) / list.Count, FillColor = Palette[m % Palette.Length] });
                }
            }

            ticks.Add(new Tick((f * group) + ((models.Count - 1) / 2.0), faults[f]));
        }

        plot.Add.Bars(bars);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Bottom.TickLabelStyle.Rotation = 45;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Axes.Bottom.MinimumSize = 170;
        plot.Axes.Right.MinimumSize = 80;
        plot.Axes.Margins(bottom: 0);
        plot.Axes.SetLimitsY(0, 130); // room above the bars for the legend
        for (var m = 0; m < models.Count; m++)
        {
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = models[m], FillColor = Palette[m % Palette.Length] });
        }

        plot.ShowLegend(Alignment.UpperRight);
        plot.Title("System survival by fault type");
        plot.YLabel("% of trials the system survived");
        return plot;
    }

    private static void Save(Plot plot, string directory, string name, List<string> files)
    {
        plot.SavePng(Path.Combine(directory, $"{name}.png"), Width, Height);
        plot.SaveSvg(Path.Combine(directory, $"{name}.svg"), Width, Height);
        files.Add($"{name}.png");
        files.Add($"{name}.svg");
    }
}
