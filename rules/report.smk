# Summary plots and tables: backbone-factor correlations with mAP, final and transfer metrics.


rule report_plots:
    """Backbone factors vs mAP (all models and the front), and the final/transfer metrics table."""
    input:
        "results/stage1/front.parquet",  # unnamed: dependencies only
        modular_fronts,
        populations=last_populations,
        final=final_targets,
        baselines=lambda wc: baseline_targets() if config["baselines"].get("in_all") else [],
        voc=lambda wc: transfer_targets("voc"),
        bdd=lambda wc: transfer_targets("bdd"),
    output:
        correlation=report("results/analysis/backbone_factors.png", category="Analysis",
                           caption="../report/factors.rst"),
        correlation_table="results/analysis/backbone_factors.csv",
        metrics=report("results/analysis/final_metrics.csv", category="Final models",
                       caption="../report/final.rst"),
        speed_accuracy=report("results/analysis/speed_accuracy.png", category="Final models",
                              caption="../report/speed_accuracy.rst"),
    log:
        "results/logs/report_plots.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"
